"""`llmops`: the platform's command line. Every command honours the variables in README "Configuration"."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from orchestration.processes import PortUnavailable, ensure_port_free, run_as_group
from resources import settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _setup() -> dict[str, str]:
    """The effective settings, defaults filled in; a malformed one stops the command naming it."""
    values = settings.apply_defaults()
    if found := settings.problems(check_paths=False):
        raise click.ClickException("; ".join(found) + " (see `llmops config`)")
    values[settings.DAGSTER_HOME] = str(settings.ensure_dagster_home())
    Path(values[settings.LLMOPS_HOME]).mkdir(parents=True, exist_ok=True)
    return values


def _seed(traces: int, days: float, seed: int, experiment: str) -> None:
    from tqdm import tqdm

    from resources.agent.traffic import seed_demo

    with tqdm(total=traces, desc="demo traces", unit="trace") as bar:
        summary = seed_demo(traces, experiment=experiment, days=days, seed=seed, on_trace=lambda: bar.update(1))
    click.echo(
        f"Seeded {len(summary.trace_ids)} traces into experiment '{experiment}' (id {summary.experiment_id}): "
        f"{summary.error_traces} errors, {summary.feedback} human feedback, {summary.judge_assessments} judge scores."
    )


def _set_verbose(context: click.Context, _parameter: click.Parameter, value: bool) -> None:
    context.meta["llmops.verbose"] = context.meta.get("llmops.verbose", False) or value


verbose_option = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbose,
                              help="Also show Dagster's events as they happen (they are always in the run's log).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@verbose_option
def main() -> None:
    """llmops-platform: MLflow traces -> DuckDB warehouse -> insights, orchestrated by Dagster."""


@main.command("config")
def config_command() -> None:
    """Print every setting's effective value (embedded default or your environment) and check them all."""
    settings.apply_defaults()
    settings.ensure_dagster_home()
    for setting in settings.SETTINGS:
        click.echo(f"{setting.name}={settings.shown_value(setting)}")
    if found := settings.problems(check_paths=True):
        raise click.ClickException("\n  ".join(["the configuration has problems:", *found]))


@main.command("seed-demo")
@click.option("--traces", default=300, show_default=True, type=click.IntRange(min=1), help="How many traces.")
@click.option("--days", default=14.0, show_default=True, type=click.FloatRange(min=0.01), help="Spread over this many past days.")
@click.option("--seed", default=7, show_default=True, help="Random seed: the same seed gives the same traffic.")
@click.option("--experiment", default=None, help="Experiment name [default: $LLMOPS_DEMO_EXPERIMENT or llmops-demo].")
def seed_demo_command(traces: int, days: float, seed: int, experiment: str | None) -> None:
    """Write demo agent traffic (traces, feedback, judge scores) into the MLflow tracking store."""
    _setup()
    _seed(traces, days, seed, experiment or os.environ[settings.LLMOPS_DEMO_EXPERIMENT])


def _materialize(job_name: str, run_config: dict | None = None, show_results: bool = True) -> None:
    """Run a job in this process: a line per step, then its Results block, or the failed step's reason."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.job_output import run_job
    from orchestration.run_monitoring import fail_dead_runs, this_worker

    instance = dg.DagsterInstance.get()
    for run_id in fail_dead_runs(instance):  # or their pool slots would keep this run waiting
        click.echo(f"Marked run {run_id} failed: its llmops process is gone.")
    click.echo(f"Running job '{job_name}'")
    outcome = run_job(build_definitions().resolve_job_def(job_name), instance, run_config or {}, this_worker(),
                      str(Path(os.environ[settings.LLMOPS_HOME]) / "logs"),
                      click.get_current_context().meta.get("llmops.verbose", False))
    if not outcome.success:
        raise click.ClickException(f"Job '{job_name}' failed: {outcome.failure}\nFull log: {outcome.log_path}")
    if show_results and outcome.results:
        click.echo("\nResults\n" + "\n".join(f"  {line}" for line in outcome.results))
    click.echo(f"Job '{job_name}' succeeded (run {outcome.run_id}); full log: {outcome.log_path}")


@main.command("extract")
@verbose_option
@click.option("--full-refresh", is_flag=True, help="Re-read every trace into a new warehouse file (repairs it).")
@click.option("--switch-source", is_flag=True,
              help="Accept another tracking store (or one that lost most traces) and rebuild the warehouse from it.")
def extract_command(full_refresh: bool, switch_source: bool) -> None:
    """Copy new and changed traces into the warehouse (the `warehouse_refresh` job; `full_refresh` with a flag)."""
    _setup()
    if switch_source:
        _materialize("full_refresh", {"ops": {"trace_warehouse": {"config": {"full_refresh": True,
                                                                              "switch_source": True}}}})
    else:
        _materialize("full_refresh" if full_refresh else "warehouse_refresh")


@main.command("release-prompts")
@verbose_option
def release_prompts_command() -> None:
    """Sync the prompt files, evaluate the candidates and promote them if the gate passes (`prompt_release`)."""
    _setup()
    _materialize("prompt_release")


@main.command("rollback-prompts")
@verbose_option
def rollback_prompts_command() -> None:
    """Move the prompts' `production` alias back to the versions the last promotion replaced."""
    _setup()
    _materialize("prompt_rollback")


def _set_environment(_context: click.Context, _parameter: click.Parameter, value: str | None) -> None:
    if value:
        os.environ[settings.LLMOPS_DEPLOY_ENV] = value


environment_option = click.option(
    "--env", default=None, expose_value=False, callback=_set_environment,
    help="Deployment environment of deploy/environments.yaml [default: $LLMOPS_DEPLOY_ENV or dev].",
)


@main.command("deploy")
@verbose_option
@environment_option
def deploy_command() -> None:
    """Register the agent if it changed and deploy it, smoke-tested, to an environment (`agent_release`)."""
    _setup()
    _materialize("agent_release")


@main.command("rollback-agent")
@verbose_option
@environment_option
def rollback_agent_command() -> None:
    """Serve the version the current `champion` replaced again (`agent_rollback`)."""
    _setup()
    _materialize("agent_rollback")


@main.command("stop-serving")
@environment_option
def stop_serving_command() -> None:
    """Stop the local model server of an environment (Databricks endpoints are left alone)."""
    from resources.deployment import DeploymentResource
    from resources.serving import LocalServing

    values = _setup()
    deployment = DeploymentResource(model_name=values[settings.LLMOPS_MODEL_NAME],
                                    config_path=values[settings.LLMOPS_DEPLOY_CONFIG],
                                    environment=values[settings.LLMOPS_DEPLOY_ENV],
                                    state_dir=values[settings.LLMOPS_SERVING_DIR])
    target = deployment.target(values[settings.MLFLOW_TRACKING_URI], os.environ[settings.LLMOPS_DEMO_EXPERIMENT])
    if not isinstance(target, LocalServing):
        raise click.ClickException(f"environment {os.environ[settings.LLMOPS_DEPLOY_ENV]!r} is not served locally")
    current = target.current()
    target.stop()
    click.echo(f"Stopped the server of version {current.version} at {current.url}." if current else "Nothing was serving.")


@main.command("demo")
@verbose_option
@click.option("--traces", default=300, show_default=True, type=click.IntRange(min=1), help="Demo traces to seed.")
@click.option("--reseed", is_flag=True, help="Seed more traffic even if the demo experiment already has traces.")
def demo_command(traces: int, reseed: bool) -> None:
    """Seed demo traffic (first time), materialize every asset, and say where everything is."""
    values = _setup()
    import mlflow

    experiment = os.environ[settings.LLMOPS_DEMO_EXPERIMENT]
    existing = mlflow.get_experiment_by_name(experiment)
    has_traces = existing is not None and len(
        mlflow.MlflowClient().search_traces(locations=[existing.experiment_id], max_results=1, include_spans=False)
    )
    if reseed or not has_traces:
        _seed(traces, 14.0, 7, experiment)
    else:
        click.echo(f"Experiment '{experiment}' already has traces; use --reseed to add more.")
    _materialize("main", show_results=False)

    from assets.traces.quality import warehouse_summary
    from resources.warehouse import WarehouseResource

    with WarehouseResource(path=values[settings.LLMOPS_DUCKDB_PATH]).connect(read_only=True) as con:
        counts = ", ".join(f"{table} {rows}" for table, rows in warehouse_summary(con).rows.items())
    uri = values[settings.MLFLOW_TRACKING_URI]
    prompts = ", ".join(
        f"{name} v{version.version} ({', '.join(aliases)})"
        for name, version, aliases in _production_prompts(uri)
    )
    click.echo(
        f"""
Results
  MLflow tracking store  {settings.mask_uri(uri)}
  DuckDB warehouse       {values[settings.LLMOPS_DUCKDB_PATH]}
                         ({counts})
  Dagster instance       {values[settings.DAGSTER_HOME]}
  Insights report        {Path(values[settings.LLMOPS_REPORTS_DIR]) / "insights.html"}
  Prompts                {prompts or "none in production (see the prompt_evals gate in the Dagster UI)"}

Next
  Deploy agent uv run llmops deploy                  -> a local model server, smoke-tested
  Dagster UI   uv run llmops ui                      -> http://127.0.0.1:3000
  Insights API uv run llmops serve                   -> http://127.0.0.1:8000/docs
  MLflow UI    uv run mlflow ui --backend-store-uri {settings.mask_uri(uri)} --port 5000
  Query        uv run python -c "import duckdb; print(duckdb.connect('{values[settings.LLMOPS_DUCKDB_PATH]}', read_only=True).sql('SELECT status, count(*) FROM traces GROUP BY 1'))"
"""
    )


@main.command("alerts")
@click.option("--all", "show_all", is_flag=True, help="Resolved incidents too, not only the open ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON `GET /api/alerts/incidents` answers.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many incidents, the newest.")
def alerts_command(show_all: bool, as_json: bool, limit: int) -> None:
    """List the open alert incidents (with --all, the resolved ones too), newest first: the rule, where, the
    condition and since when, what goes with it (top root causes) and whether each channel was notified.

    Read from the warehouse (the alert_incidents asset writes the incidents after each refresh)."""
    values = _setup()
    path = values[settings.LLMOPS_DUCKDB_PATH]
    if not Path(path).exists():
        raise click.ClickException(f"the warehouse {path} does not exist yet: run `llmops extract`")
    from assets.alerts.listing import (IncidentsResponse, cause_text, list_incidents, notification_text,
                                       open_span)
    from resources.warehouse import WarehouseResource

    engine = WarehouseResource(path=path).engine(read_only=True)
    try:
        with engine.connect() as conn:
            incidents = list_incidents(conn, state="all" if show_all else "open", limit=limit)
    finally:
        engine.dispose()
    if as_json:
        click.echo(IncidentsResponse(incidents=incidents).model_dump_json(indent=2))
        return
    for incident in incidents:
        click.echo(f"{incident.state.upper():<8}  {incident.rule}  {incident.scope_name}  {incident.condition}  "
                   f"{open_span(incident)}")
        for cause in incident.root_causes:
            click.echo(f"  goes with: {cause_text(cause)}")
        for note in incident.notifications:
            click.echo(f"  {notification_text(note)}")
        click.echo()
    opened = sum(incident.state == "open" for incident in incidents)
    resolved = len(incidents) - opened
    count = f"{opened or 'No'} open incident{'' if opened == 1 else 's'}"
    if show_all:
        count += f", {resolved or 'none'} resolved"
    more = f" (the newest {limit}: see --limit)" if len(incidents) == limit else ""
    click.echo(f"{count}{more}.")


def _production_prompts(uri: str) -> list[tuple]:
    from mlflow import MlflowClient

    from assets.prompts.assets import AGENT_PROMPTS
    from assets.prompts.registry import prompt_state
    from assets.vocabulary import PRODUCTION

    client, found = MlflowClient(uri), []
    for name in AGENT_PROMPTS:
        state = prompt_state(client, name)
        if (version := state.alias(PRODUCTION)) is not None:
            found.append((name, version, state.aliases_of(version.version)))
    return found


@main.command("ui")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535),
              help="Port of the Dagster webserver.")
def ui_command(port: int) -> None:
    """Start the Dagster UI (`dagster dev`) on 127.0.0.1 with this platform's instance; stopping it stops them all."""
    try:
        ensure_port_free("127.0.0.1", port)
    except PortUnavailable as error:
        raise click.ClickException(str(error)) from None
    _setup()
    workspace = PROJECT_DIR / "workspace.yaml"
    sys.exit(run_as_group(
        [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_DIR,
    ))


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; one other than loopback needs LLMOPS_API_TOKEN or LLMOPS_API_TOKENS.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
def serve_command(host: str, port: int) -> None:
    """Serve the insights REST API over the warehouse and the feedback API (OpenAPI page at /docs).

    With LLMOPS_API_TOKEN (one token) or LLMOPS_API_TOKENS (name=token,...) set, every route but /health needs
    `Authorization: Bearer <token>`.
    """
    import uvicorn

    from orchestration.api import create_app, is_loopback, parse_client_tokens

    values = _setup()
    token = os.environ.get(settings.LLMOPS_API_TOKEN) or None
    try:
        clients = parse_client_tokens(os.environ.get(settings.LLMOPS_API_TOKENS, ""))
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if not (token or clients) and not is_loopback(host):
        raise click.ClickException(f"Refusing to serve on {host} without authentication: set {settings.LLMOPS_API_TOKEN} (or "
                                   f"{settings.LLMOPS_API_TOKENS}=name=token,...), or serve on 127.0.0.1.")
    try:  # before the URL is printed: a taken port fails here, at once
        ensure_port_free(host, port)
    except PortUnavailable as error:
        raise click.ClickException(str(error)) from None
    try:
        app = create_app(values[settings.LLMOPS_DUCKDB_PATH], values[settings.MLFLOW_TRACKING_URI], token=token,
                         client_tokens=clients, reports_dir=values[settings.LLMOPS_REPORTS_DIR])
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    # MLflow's client retries an unreachable server for minutes; the feedback API answers 503 with Retry-After at
    # once instead, and the caller retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    click.echo(f"Insights API on http://{host}:{port}/docs over {values[settings.LLMOPS_DUCKDB_PATH]}"
               + (" (bearer token required)" if token or clients else ""))
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
