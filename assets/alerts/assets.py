"""Group `alerts`: the rules of the alert rules file judged over the warehouse after each refresh
(`alert_incidents`), the deployed endpoint's health checks (`endpoint_health`), and a check that says whether
an incident is open."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.alerts.evaluation import FIRING
from assets.alerts.incidents import AlertRun, evaluate_and_notify, links, now_ms, open_incidents
from assets.alerts.metrics import ENDPOINT_CHECKS
from assets.alerts.rules import AlertRulesFileError, RulesFile, load_rules, rules_path
from assets.insights.assets import WAREHOUSE_TABLES, dimension_facts
from assets.traces.quality import markdown_table
from assets.vocabulary import NOTE
from resources import settings
from resources.deployment import DeploymentResource
from resources.mlflow import MlflowResource
from resources.serving import DeployError
from resources.warehouse import WarehouseResource


class AlertConfig(dg.Config):
    rules_file: str | None = Field(default=None, description="The alert rules (YAML); default "
                                   "$LLMOPS_ALERT_RULES, else alerts/rules.yaml.")


def _rules(config: AlertConfig) -> RulesFile:
    """The rules file, or a failure naming each problem as file:line (before anything changes)."""
    try:
        return load_rules(Path(config.rules_file) if config.rules_file else rules_path())
    except AlertRulesFileError as exc:
        raise dg.Failure(description=str(exc), metadata={"problems": [str(p) for p in exc.problems]}) from None


def _where(mlflow: MlflowResource):
    public_url = settings.checked(settings.LLMOPS_PUBLIC_URL)
    return lambda experiment_id: links(experiment_id, mlflow.tracking_uri, public_url)


def _result(context: dg.AssetExecutionContext, rules: RulesFile, run: AlertRun,
            **extra) -> dg.MaterializeResult:
    for warning in run.changes.warnings:
        context.log.warning(warning)
    failed = [d for d in run.deliveries if d.error]
    for delivery in failed:
        context.log.warning(f"notification of rule {delivery.rule} ({delivery.event}) to channel "
                            f"{delivery.channel} not delivered, retried at the next evaluation: {delivery.error}")
    return dg.MaterializeResult(metadata={
        "rules": dg.MetadataValue.md(markdown_table(
            ["rule", "scope", "value and threshold", "samples", "state"],
            [(e.rule.name, e.scope_name, e.condition, e.count, e.state) for e in run.evaluations])),
        "judged": dg.MetadataValue.int(len(run.evaluations)),  # rule × experiment (or endpoint)
        "firing": dg.MetadataValue.int(sum(e.state == FIRING for e in run.evaluations)),
        "opened": dg.MetadataValue.int(len(run.changes.opened)),
        "resolved": dg.MetadataValue.int(len(run.changes.resolved)),
        "open_incidents": dg.MetadataValue.int(len(run.open_incidents)),
        "notifications_sent": dg.MetadataValue.int(len(run.deliveries) - len(failed)),
        "notifications_failed": dg.MetadataValue.int(len(failed)),
        "channels": dg.MetadataValue.md(markdown_table(  # the host only: an address is a secret
            ["channel", "address", "state"],
            [(c.name, c.shown, f"off: {c.off}" if c.off else "on") for c in rules.channels.values()])),
        "rules_file": dg.MetadataValue.path(str(rules.path)),
        **extra,
    })


@dg.asset(
    # after the dimension facts: an incident's root causes count them
    group_name="alerts", owners=["team:llmops-platform"], deps=[*WAREHOUSE_TABLES, dimension_facts],
    pool="duckdb_write", kinds={"duckdb"}, automation_condition=dg.AutomationCondition.eager(),
    description="The alert rules (alerts/rules.yaml) judged over the production traces after each refresh: each "
    "rule's value, threshold and state per experiment; incidents opened and resolved (table alert_incidents, "
    "with the top root causes in the window) and one notification per channel at each.",
)
def alert_incidents(context: dg.AssetExecutionContext, config: AlertConfig, warehouse: WarehouseResource,
                    mlflow: MlflowResource) -> dg.MaterializeResult:
    rules = _rules(config)
    with warehouse.migrated():
        pass  # the alert tables exist, also on a warehouse last written by an older version
    run = evaluate_and_notify(warehouse.engine(read_only=False), rules, "traces", _where(mlflow))
    return _result(context, rules, run)


@dg.asset_check(asset=alert_incidents, description="Passes while no incident is open (a warning, not a failure: "
                "the refresh itself worked); its metadata lists the open incidents.")
def no_open_incidents(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.engine(read_only=True).connect() as conn:
        rows = open_incidents(conn)
    return dg.AssetCheckResult(
        passed=not rows, severity=dg.AssetCheckSeverity.WARN,
        description=f"{len(rows)} open incidents: " + "; ".join(f"{r.rule} in {r.scope_name}" for r in rows)
        if rows else "No open incidents.",
        metadata={"open_incidents": dg.MetadataValue.md(markdown_table(
            ["rule", "scope", "condition", "opened (epoch ms)"],
            [(r.rule, r.scope_name, r.condition, r.opened_at_ms) for r in rows]))},
    )


@dg.asset(
    group_name="alerts", owners=["team:llmops-platform"], pool="duckdb_write", kinds={"duckdb"},
    description="Pings the agent deployed to LLMOPS_DEPLOY_ENV (local server /ping, or the Databricks endpoint's "
    "state), records the check (table endpoint_checks) and judges the endpoint rules: an endpoint down is an "
    "incident like the others. Scheduled every 5 minutes (LLMOPS_HEALTH_CRON).",
)
def endpoint_health(context: dg.AssetExecutionContext, config: AlertConfig, warehouse: WarehouseResource,
                    mlflow: MlflowResource, deployment: DeploymentResource) -> dg.MaterializeResult:
    rules = _rules(config)
    try:
        target = deployment.target(mlflow.tracking_uri, mlflow.agent_experiment)
    except DeployError as exc:  # the environments file or LLMOPS_DEPLOY_ENV is wrong: say so, no stack
        raise dg.Failure(description=str(exc)) from None
    health = target.health()
    with warehouse.migrated() as con:
        if health is not None:
            con.execute(f"INSERT INTO {ENDPOINT_CHECKS.name} VALUES (?, ?, ?, ?, ?, ?)",
                        [health.environment, now_ms(), health.version, health.up, health.latency_ms, health.reason])
    environments = [deployment.environment] if health is not None else []
    run = evaluate_and_notify(warehouse.engine(read_only=False), rules, "endpoint", _where(mlflow), environments)
    if health is None:
        state = {NOTE: dg.MetadataValue.text(f"nothing is deployed to {deployment.environment}: nothing to check")}
    else:
        state = {"environment": dg.MetadataValue.text(health.environment),
                 "up": dg.MetadataValue.bool(health.up),
                 "version": dg.MetadataValue.int(health.version) if health.version is not None else None,
                 "latency_ms": dg.MetadataValue.float(health.latency_ms) if health.latency_ms is not None else None,
                 "reason": dg.MetadataValue.text(health.reason or "")}
    return _result(context, rules, run, **{k: v for k, v in state.items() if v is not None})


ALERT_ASSETS = [alert_incidents, endpoint_health]
ALERT_CHECKS = [no_open_incidents]
