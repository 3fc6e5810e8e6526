"""Group `insights`: rollup tables, root causes and the HTML report, refreshed after each warehouse extract."""

import os
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from assets.insights.facts import refresh_facts
from assets.insights.outcomes import load_outcomes, outcomes_path
from assets.insights.rollups import write_rollups, write_root_causes
from assets.traces.quality import markdown_table
from resources import settings
from resources.warehouse import WarehouseResource

WAREHOUSE_TABLES = [dg.AssetKey(table) for table in ("traces", "spans", "trace_tags", "assessments")]
COMMON = dict(group_name="insights", owners=["team:llmops-platform"], automation_condition=dg.AutomationCondition.eager())


class RootCauseConfig(dg.Config):
    outcomes_file: str | None = Field(default=None, description="Which traces went badly (YAML); default "
                                      "$LLMOPS_OUTCOMES, else outcomes/outcomes.yaml.")
    include_evaluations: bool = Field(default=False, description="Also count the traces of evaluation runs "
                                      "(mlflow.genai.evaluate); by default production traces only.")


class ReportConfig(dg.Config):
    reports_dir: str | None = Field(default=None, description="Folder of insights.html; default $LLMOPS_REPORTS_DIR.")
    include_evaluations: bool = Field(default=False, description="Also report the traces of evaluation runs, in "
                                      "their own Evaluations section (never mixed into the production charts).")


@dg.asset(
    **COMMON, deps=WAREHOUSE_TABLES, pool="duckdb_write", kinds={"duckdb"},
    description="Hourly and daily rollups per experiment (insights_{traffic,tools,tags,assessments}_{hourly,daily}): "
    "volume, latency percentiles, tokens and cost; tool calls, errors and latency; tag values; feedback counts and stats; "
    "and mlflow_spans_hourly (span counts, latencies and costs for MLflow's trace metrics endpoint).",
)
def insights_rollups(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.engine(read_only=False).begin() as conn:
        rows = write_rollups(conn)
        daily = conn.execute(sa.text(
            "SELECT experiment_id, epoch_ms(time_bucket)::DATE AS day, count, error_count, round(p95_latency) AS p95_ms, "
            "total_tokens, round(total_cost, 4) AS cost_usd FROM insights_traffic_daily ORDER BY time_bucket DESC LIMIT 14"
        )).all()
    context.log.info(f"Rollups rebuilt: {rows}")
    return dg.MaterializeResult(metadata={
        **{f"rows_{table}": dg.MetadataValue.int(n) for table, n in rows.items()},
        "latest_days": dg.MetadataValue.md(markdown_table(
            ["experiment", "day", "traces", "errors", "p95 ms", "tokens", "cost USD"], daily)),
    })


@dg.asset(
    **COMMON, deps=WAREHOUSE_TABLES, pool="duckdb_write", kinds={"duckdb"},
    description="Every trace's values of the dimensions that do not depend on what is counted (span types and "
    "names, models, error types, tools, tags, metadata, status, name, user), numbered once (dimension_values), a "
    "row per trace and value (trace_dimension_values) and counted per hour (dimension_value_hours), so that "
    "correlations, root causes and discovery count them instead of reading spans, tags and metadata. Kept "
    "incrementally: only the traces the last extract wrote are read.",
)
def dimension_facts(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.engine(read_only=False).begin() as conn:
        refreshed = refresh_facts(conn)
    context.log.info(f"Dimension facts: {refreshed}")
    return dg.MaterializeResult(metadata={
        "traces_added": dg.MetadataValue.int(refreshed.traces_added),
        "facts_added": dg.MetadataValue.int(refreshed.facts_added),
        "facts_deleted": dg.MetadataValue.int(refreshed.facts_deleted),
        "facts": dg.MetadataValue.int(refreshed.facts),
        "values": dg.MetadataValue.int(refreshed.values),
    })


@dg.asset(
    **COMMON, deps=[*WAREHOUSE_TABLES, dimension_facts], pool="duckdb_write", kinds={"duckdb"},
    description="What goes with bad outcomes: for each outcome the outcomes file declares (ERROR traces, "
    "thumbs-down, low scores), every dimension value that goes with it more than chance, ranked by NPMI with support "
    "counts and named in plain words (table root_causes). Production traces only, unless configured.",
)
def root_causes(context: dg.AssetExecutionContext, config: RootCauseConfig,
                warehouse: WarehouseResource) -> dg.MaterializeResult:
    path = Path(config.outcomes_file) if config.outcomes_file else outcomes_path()
    rules = load_outcomes(path)
    with warehouse.engine(read_only=False).begin() as conn:
        rows = write_root_causes(conn, rules, config.include_evaluations)
    top = [r for r in rows if r["rank"] <= 3]
    context.log.info(f"{len(rows)} root-cause rows for {len({(r['experiment_id'], r['outcome']) for r in rows})} outcomes")
    return dg.MaterializeResult(metadata={
        "rows": dg.MetadataValue.int(len(rows)),
        "outcomes": dg.MetadataValue.int(len({(r["experiment_id"], r["outcome"], r["outcome_value"]) for r in rows})),
        "top_root_causes": dg.MetadataValue.md(markdown_table(
            ["experiment", "outcome", "goes with", "NPMI", "strength", "together / with it"],
            [(r["experiment_id"], f"{r['outcome_description']} ({r['outcome_count']})", r["description"],
              f"{r['npmi']:.3f}", f"{r['strength']} {r['direction']}", f"{r['intersection_count']} / {r['count']}")
             for r in top],
        )),
        "outcomes_file": dg.MetadataValue.path(str(path)),
        "min_support": dg.MetadataValue.int(rules.min_support),
    })


@dg.asset(
    # after the alerts: the report shows their incidents
    **COMMON, deps=[insights_rollups, root_causes, dg.AssetKey("alert_incidents")], kinds={"html", "plotly"},
    description="An HTML report of charts per experiment, production traffic only unless configured: volume, "
    "latency, error rate, tokens and cost over time, tools with error rates, feedback trend, and a root-cause "
    "heatmap. Served by `llmops serve` at /report; the link (with LLMOPS_PUBLIC_URL) or the path is in the metadata.",
)
def insights_report(config: ReportConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    from assets.insights.report import REPORT_FILE, render_report  # pandas and Plotly: ~0.6 s only this step pays

    folder = Path(config.reports_dir or os.environ[settings.LLMOPS_REPORTS_DIR]).resolve()
    served = os.environ.get(settings.LLMOPS_REPORTS_DIR)
    # `llmops serve` answers the report of $LLMOPS_REPORTS_DIR: one written elsewhere gets its path only
    is_served = served is not None and folder == Path(served).resolve()
    public_url = settings.checked(settings.LLMOPS_PUBLIC_URL)
    link = f"{public_url.rstrip('/')}/report" if is_served and public_url else None
    with warehouse.engine(read_only=True).connect() as conn:
        report = render_report(conn, folder / REPORT_FILE, config.include_evaluations)
    return dg.MaterializeResult(metadata={
        **({"report": dg.MetadataValue.url(link)} if link else {}),
        "path": dg.MetadataValue.path(str(report.path)),
        "charts": dg.MetadataValue.int(report.charts),
        "experiments": dg.MetadataValue.json(report.experiments),
        "evaluations": dg.MetadataValue.json(report.evaluations),
    })
