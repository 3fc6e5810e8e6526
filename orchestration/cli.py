"""`llmops`: the platform's command line. Every command honours the variables in README "Configuration"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from resources import settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _setup() -> dict[str, str]:
    values = settings.apply_defaults()
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """llmops-platform: MLflow traces -> DuckDB warehouse -> insights, orchestrated by Dagster."""


@main.command("config")
def config_command() -> None:
    """Print the effective configuration (embedded defaults plus your environment)."""
    for name, value in _setup().items():
        click.echo(f"{name}={settings.mask_uri(value)}")


@main.command("seed-demo")
@click.option("--traces", default=300, show_default=True, type=click.IntRange(min=1), help="How many traces.")
@click.option("--days", default=14.0, show_default=True, type=click.FloatRange(min=0.01), help="Spread over this many past days.")
@click.option("--seed", default=7, show_default=True, help="Random seed: the same seed gives the same traffic.")
@click.option("--experiment", default=None, help="Experiment name [default: $LLMOPS_DEMO_EXPERIMENT or llmops-demo].")
def seed_demo_command(traces: int, days: float, seed: int, experiment: str | None) -> None:
    """Write demo agent traffic (traces, feedback, judge scores) into the MLflow tracking store."""
    _setup()
    _seed(traces, days, seed, experiment or os.environ[settings.LLMOPS_DEMO_EXPERIMENT])


def _materialize(job_name: str, run_config: dict | None = None) -> None:
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.run_monitoring import fail_dead_runs, this_worker

    instance = dg.DagsterInstance.get()
    for run_id in fail_dead_runs(instance):  # or their pool slots would keep this run waiting
        click.echo(f"Marked run {run_id} failed: its llmops process is gone.")
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, run_config=run_config or {}, raise_on_error=False, tags=this_worker()
    )
    if not result.success:
        raise click.ClickException(f"Job '{job_name}' failed: {_failure_reason(result.all_events)}")
    click.echo(f"Job '{job_name}' succeeded (run {result.run_id}).")


def _failure_reason(events: list) -> str:
    """The first failed step's own words (a `dg.Failure` description or the error's message), else the run's."""
    for event in events:
        if event.is_step_failure and (data := event.step_failure_data):
            if data.user_failure_data and data.user_failure_data.description:
                return f"{event.step_key}: {data.user_failure_data.description}"
            if data.error:
                return f"{event.step_key}: {data.error.message.strip()}"
    failure = next((e for e in events if e.is_failure), None)
    return failure.message if failure else "see the run log"


@main.command("extract")
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
def release_prompts_command() -> None:
    """Sync the prompt files, evaluate the candidates and promote them if the gate passes (`prompt_release`)."""
    _setup()
    _materialize("prompt_release")


@main.command("rollback-prompts")
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
@environment_option
def deploy_command() -> None:
    """Register the agent if it changed and deploy it, smoke-tested, to an environment (`agent_release`)."""
    _setup()
    _materialize("agent_release")


@main.command("rollback-agent")
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
    _materialize("main")

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


def _production_prompts(uri: str) -> list[tuple]:
    from mlflow import MlflowClient

    from assets.prompts.assets import AGENT_PROMPTS
    from assets.prompts.registry import PRODUCTION, prompt_state

    client, found = MlflowClient(uri), []
    for name in AGENT_PROMPTS:
        state = prompt_state(client, name)
        if (version := state.alias(PRODUCTION)) is not None:
            found.append((name, version, state.aliases_of(version.version)))
    return found


@main.command("ui")
@click.option("--port", default=3000, show_default=True, help="Port of the Dagster webserver.")
def ui_command(port: int) -> None:
    """Start the Dagster UI (`dagster dev`) on 127.0.0.1 with this platform's instance."""
    _setup()
    workspace = PROJECT_DIR / "workspace.yaml"
    sys.exit(
        subprocess.call(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT_DIR,
        )
    )


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

    from orchestration.api import API_TOKEN_ENV, API_TOKENS_ENV, create_app, is_loopback, parse_client_tokens

    values = _setup()
    token = os.environ.get(API_TOKEN_ENV) or None
    try:
        clients = parse_client_tokens(os.environ.get(API_TOKENS_ENV, ""))
        app = create_app(values[settings.LLMOPS_DUCKDB_PATH], values[settings.MLFLOW_TRACKING_URI], token=token,
                         client_tokens=clients)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if not (token or clients) and not is_loopback(host):
        raise click.ClickException(f"Refusing to serve on {host} without authentication: set {API_TOKEN_ENV} (or "
                                   f"{API_TOKENS_ENV}=name=token,...), or serve on 127.0.0.1.")
    # MLflow's client retries an unreachable server for minutes; the feedback API answers 503 with Retry-After at
    # once instead, and the caller retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    click.echo(f"Insights API on http://{host}:{port}/docs over {values[settings.LLMOPS_DUCKDB_PATH]}"
               + (" (bearer token required)" if token or clients else ""))
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    main()
