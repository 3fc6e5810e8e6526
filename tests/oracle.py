"""What the warehouse must hold, computed from MLflow's own API; and the warehouse's rows, comparably shaped."""

from __future__ import annotations

import json

import duckdb
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.store.tracking.utils.trace_analytics import assessment_aggregate

PROMOTED = {"mlflow.trace.session", "mlflow.trace.tokenUsage", "mlflow.trace.cost"}


def mlflow_rows(uri: str, experiment_ids: list[str]) -> dict[str, set]:
    """Every trace of the experiments, read page by page with MlflowClient.search_traces."""
    client = MlflowClient(tracking_uri=uri)
    traces, token = [], None
    while True:
        page = client.search_traces(locations=experiment_ids, max_results=200, page_token=token)
        traces.extend(page)
        token = page.token
        if not token:
            break
    rows: dict[str, set] = {k: set() for k in ("traces", "spans", "trace_tags", "trace_metadata", "assessments")}
    rows["experiments"] = {(e.experiment_id, e.name, e.lifecycle_stage)
                           for e in client.search_experiments(view_type=ViewType.ALL)}
    for trace in traces:
        info = trace.info
        meta = info.trace_metadata
        usage = json.loads(meta.get("mlflow.trace.tokenUsage", "{}"))
        cost = json.loads(meta.get("mlflow.trace.cost", "{}"))
        rows["traces"].add((
            info.trace_id, info.experiment_id, info.request_time, info.execution_duration, info.state.value,
            info.client_request_id, info.tags.get("mlflow.traceName"), meta.get("mlflow.trace.session"),
            usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens"),
            _round(cost.get("total_cost")), info.request_preview, info.response_preview,
            meta.get("mlflow.trace.user"), usage.get("cache_read_input_tokens"), usage.get("cache_creation_input_tokens"),
            usage.get("cache_creation_input_tokens_above_1hr"),
        ))
        for span in trace.data.spans:
            span_usage = span.get_attribute("mlflow.chat.tokenUsage") or {}
            cost = span.get_attribute("mlflow.llm.cost") or {}
            rows["spans"].add((
                info.trace_id, span.span_id, span.parent_id, span.name, span.span_type,
                span.status.status_code.value, span.start_time_ns, span.end_time_ns,
                span.get_attribute("mlflow.llm.model"), span_usage.get("input_tokens"), span_usage.get("total_tokens"),
                *(_round(cost.get(k)) for k in ("input_cost", "output_cost")), _exception_type(span),
            ))
        rows["trace_tags"] |= {(info.trace_id, k, v) for k, v in info.tags.items()}
        rows["trace_metadata"] |= {(info.trace_id, k, v) for k, v in meta.items() if k not in PROMOTED}
        for a in info.assessments:
            value = a.feedback.value if a.feedback is not None else a.expectation.value
            rows["assessments"].add((
                a.assessment_id, info.trace_id, a.name, "feedback" if a.feedback is not None else "expectation",
                json.dumps(value, sort_keys=True), _typed(value), a.source.source_type, a.source.source_id,
                a.rationale, a.span_id, a.create_time_ms, a.last_update_time_ms, a.valid,
                json.dumps(a.metadata) if a.metadata else None, *assessment_aggregate(value),
            ))
    return rows


def warehouse_rows(path: str) -> dict[str, set]:
    with duckdb.connect(path, read_only=True) as con:
        def q(sql: str) -> set:
            return set(con.execute(sql).fetchall())

        assessments = set()
        for row in con.execute(
            """SELECT assessment_id, trace_id, name, assessment_type, value_json, value_type, bool_value,
                      numeric_value, string_value, source_type, source_id, rationale, span_id, created_ms,
                      last_updated_ms, valid, metadata_json, aggregate_value, is_numeric_value FROM assessments"""
        ).fetchall():
            (aid, tid, name, atype, value_json, value_type, b, n, s, stype, sid, rationale, span, c, u, valid,
             *aggregate) = row
            typed = {"boolean": b, "numeric": n, "string": s, "json": None, None: None}[value_type]
            assessments.add((aid, tid, name, atype, json.dumps(json.loads(value_json), sort_keys=True),
                             (value_type, typed), stype, sid, rationale, span, c, u, valid, *aggregate))
        return {
            "traces": {
                row[:11] + (_round(row[11]),) + row[12:]
                for row in q("""SELECT trace_id, experiment_id, timestamp_ms, execution_time_ms, status,
                                client_request_id, trace_name, session_id, input_tokens, output_tokens,
                                total_tokens, total_cost, request_preview, response_preview, user_id,
                                cache_read_input_tokens, cache_creation_input_tokens,
                                cache_creation_input_tokens_above_1hr FROM traces""")
            },
            "spans": q("""SELECT trace_id, span_id, parent_span_id, name, span_type, status, start_time_ns,
                          end_time_ns, model_name, input_tokens, total_tokens, input_cost, output_cost,
                          exception_type FROM spans"""),
            "trace_tags": q("SELECT trace_id, key, value FROM trace_tags"),
            "trace_metadata": q("SELECT trace_id, key, value FROM trace_metadata"),
            "assessments": assessments,
            "experiments": q("SELECT experiment_id, name, lifecycle_stage FROM experiments"),
        }


def table_dump(path: str) -> dict[str, list]:
    """Every row of every warehouse table (bookkeeping included), sorted: for byte-for-byte comparisons."""
    with duckdb.connect(path, read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def _typed(value) -> tuple[str | None, object]:
    if value is None:  # a failed judge run's value: no value, no type
        return (None, None)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("numeric", float(value))
    if isinstance(value, str):
        return ("string", value)
    return ("json", None)


def _exception_type(span) -> str | None:
    """The type of the exception that failed `span` (its last `exception` event), as the warehouse keeps it."""
    if span.status.status_code.value != "ERROR":
        return None
    types = [e.attributes.get("exception.type") for e in span.events if e.name == "exception"]
    return next((t for t in reversed(types) if t is not None), None)


def _round(value):
    return None if value is None else round(value, 12)


# What each warehouse migration added, undone: tests make a warehouse "as an older platform left it" with these.
UNDO_MIGRATION = {
    2: ["ALTER TABLE spans DROP COLUMN trace_timestamp_ms", "ALTER TABLE trace_tags DROP COLUMN experiment_id",
        "ALTER TABLE trace_tags DROP COLUMN trace_timestamp_ms", "ALTER TABLE assessments DROP COLUMN trace_timestamp_ms"],
    3: ["DROP TABLE eval_runs", "DROP TABLE eval_results"],
    4: ["ALTER TABLE _extract_runs DROP COLUMN source_read_ms"],
    5: ["ALTER TABLE _extract_runs DROP COLUMN tracking_store",
        "CREATE INDEX traces_client_request_id ON traces (client_request_id)"],
    6: [],  # data only
    7: ["DROP TABLE experiments", "ALTER TABLE traces DROP COLUMN user_id",
        "ALTER TABLE traces DROP COLUMN cache_read_input_tokens", "ALTER TABLE traces DROP COLUMN cache_creation_input_tokens"],
    8: ["DROP TABLE trace_links", "ALTER TABLE traces DROP COLUMN cache_creation_input_tokens_above_1hr",
        *(f"ALTER TABLE spans DROP COLUMN {c}" for c in ("input_cost", "output_cost", "exception_type")),
        *(f"ALTER TABLE assessments DROP COLUMN {c}" for c in ("metadata_json", "aggregate_value", "is_numeric_value"))],
    9: ["DROP TABLE alert_incidents", "DROP TABLE alert_notifications", "DROP TABLE endpoint_checks"],
    10: ["ALTER TABLE trace_metadata DROP COLUMN experiment_id", "ALTER TABLE trace_metadata DROP COLUMN trace_timestamp_ms"],
    11: [*(f"ALTER TABLE {table} DROP COLUMN trace_key"
           for table in ("traces", "spans", "trace_tags", "trace_metadata", "assessments")),
         "ALTER TABLE traces DROP COLUMN evaluation", "ALTER TABLE _extract_runs DROP COLUMN last_trace_key",
         *(f"DROP TABLE {table}" for table in ("dimension_values", "trace_dimension_values", "dimension_value_hours",
                                                "_dimension_facts_state", "_insights_rollups_state"))],
}


def downgrade(path: str, version: int) -> None:
    """Make the warehouse at `path` a schema-`version` one, as the platform of that version left it."""
    with duckdb.connect(path) as con:
        for number in sorted(UNDO_MIGRATION, reverse=True):
            if number > version:
                for statement in UNDO_MIGRATION[number]:
                    con.execute(statement)
        con.execute("DELETE FROM _schema_version WHERE version > ?", [version])
