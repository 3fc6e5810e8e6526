"""Group `traces`: the warehouse tables copied from MLflow, and their data-contract checks."""

import dagster as dg
from pydantic import Field

from assets.traces.extract import ExtractRefused, ExtractResult, extract_traces
from assets.traces.quality import contract_checks, warehouse_summary
from resources.mlflow import MlflowResource
from resources.settings import DEFAULT_MAX_DELETE_SHARE, LLMOPS_MAX_DELETE_SHARE, env_float
from resources.trace_sources import SourceError
from resources.warehouse import CONTRACT_TABLES, WarehouseResource

TABLE_DESCRIPTIONS = {
    "traces": "One row per MLflow trace: time, status, latency, tokens, cost, client_request_id.",
    "spans": "One row per span: type, status, timing, model and token usage parsed from the span.",
    "trace_tags": "Trace tags as key/value rows (including mlflow.traceName).",
    "trace_metadata": "Trace metadata as key/value rows (session, tokens and cost are columns of traces).",
    "assessments": "Feedback and expectations with their JSON value and typed bool/numeric/string columns.",
    "trace_links": "Links from traces to runs and prompt versions (mlflow.genai.evaluate, link_traces_to_run).",
}
CHECKS = {
    "traces": ("matches_source", "unique_keys"),
    "spans": ("unique_keys", "no_orphans", "content_parsed"),
    "trace_tags": ("unique_keys", "no_orphans"),
    "trace_metadata": ("unique_keys", "no_orphans"),
    "assessments": ("unique_keys", "no_orphans"),
    "trace_links": ("unique_keys", "no_orphans"),
}
CHECK_DESCRIPTIONS = {
    "matches_source": "The warehouse holds exactly as many traces as the source had when it was read.",
    "unique_keys": "No key appears twice.",
    "no_orphans": "Every row belongs to a trace in `traces`.",
    "content_parsed": "Every span's JSON content could be read (unreadable spans are kept, fields empty).",
}


class ExtractConfig(dg.Config):
    full_refresh: bool = Field(default=False, description="Re-read every trace into a new warehouse file that "
                               "replaces the current one (repairs a damaged file).")
    switch_source: bool = Field(default=False, description="Accept a tracking store other than the one the "
                                "warehouse copies, or one that lost most of its traces, and rebuild from it.")
    max_delete_share: float | None = Field(
        default=None, ge=0, le=1, description="Refuse an extract deleting more than this share of the warehouse's "
        f"traces [default: ${LLMOPS_MAX_DELETE_SHARE} or {DEFAULT_MAX_DELETE_SHARE}].")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(table, group_name="traces", description=TABLE_DESCRIPTIONS[table], kinds={"duckdb", "mlflow"},
                     owners=["team:llmops-platform"], tags={"layer": "warehouse"})
        for table in CONTRACT_TABLES
    ],
    check_specs=[
        dg.AssetCheckSpec(name, asset=table, description=CHECK_DESCRIPTIONS[name])
        for table, names in CHECKS.items()
        for name in names
    ],
    pool="duckdb_write",
    description="Copy new and changed MLflow traces into the DuckDB warehouse in one transaction.",
)
def trace_warehouse(context: dg.AssetExecutionContext, config: ExtractConfig, mlflow: MlflowResource,
                    warehouse: WarehouseResource):
    share = config.max_delete_share
    try:
        result: ExtractResult = extract_traces(
            mlflow.traces(context.log.info, context.log.warning), warehouse.path, full_refresh=config.full_refresh,
            switch_source=config.switch_source, progress=context.log.info,
            max_delete_share=env_float(LLMOPS_MAX_DELETE_SHARE, DEFAULT_MAX_DELETE_SHARE) if share is None else share,
        )
    except (ExtractRefused, SourceError) as exc:
        raise dg.Failure(description=str(exc)) from None  # the message says it all; no stack
    with warehouse.connect(read_only=True) as con:
        summary = warehouse_summary(con)
        checks = contract_checks(con, result)
    for table in CONTRACT_TABLES:
        metadata = {
            "rows": dg.MetadataValue.int(summary.rows[table]),
            "rows_written": dg.MetadataValue.int(result.rows.get(table, 0)),
            "warehouse": dg.MetadataValue.path(warehouse.path),
        }
        if table == "traces":
            metadata |= {
                "mode": result.mode,
                "source": result.source,
                "changed_traces": result.changed_traces,
                "deleted_traces": result.deleted_traces,
                "seconds": round(result.seconds, 2),
                "rebuilt": result.rebuilt or ("full refresh" if result.mode == "full" else "no"),
                "latest_traces": dg.MetadataValue.md(summary.latest_traces_md),
            }
        if table == "spans":
            metadata["unreadable_spans"] = result.bad_span_count
        yield dg.MaterializeResult(asset_key=table, metadata=metadata)
    for (table, name), (passed, details) in checks.items():
        yield dg.AssetCheckResult(
            asset_key=table, check_name=name, passed=passed, metadata=details,
            severity=dg.AssetCheckSeverity.WARN if name == "content_parsed" else dg.AssetCheckSeverity.ERROR,
        )
