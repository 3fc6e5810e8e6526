"""Incremental, exact copy of MLflow traces into the DuckDB warehouse (plain functions, no Dagster).

How a run works:
1. Fingerprint every trace in the source: a hash of its trace_info row (with MLflow's span-write counter),
   its tags, its metadata and its assessments' ids and update times. Nothing else in MLflow's store carries
   a change time (tags and status change in place), so comparing fingerprints is how late spans, tags,
   metadata, feedback and status are found.
2. Diff against the fingerprints committed by the last run: new or changed traces, traces still
   IN_PROGRESS (their spans may still arrive), and traces gone from the source.
3. In ONE warehouse transaction: delete those traces' rows, insert their current rows from the source,
   and store their new fingerprints. The "watermark" is this state, so it moves only with the data: a
   run killed anywhere leaves the last committed state, and the next run converges to a full extract.
   A full refresh instead fills a new file and renames it over the warehouse (`rebuilding`), so it never
   deletes in place and a damaged file is repaired by it.
4. Refuse a source other than the one the warehouse copies, or one that lost most of the copied traces,
   unless asked (`switch_source`): a mistyped MLFLOW_TRACKING_URI must not empty the warehouse.
Fingerprints are read before the rows, so a change racing the run is seen again by the next run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from resources.settings import DEFAULT_MAX_DELETE_SHARE
from resources.trace_sources import TraceSource, attach_with_retry, store_identity
from resources.warehouse import CONTRACT_TABLES, WarehouseDamaged, attach, check_integrity, migrate, rebuilding

log = logging.getLogger(__name__)

TRACE_NAME_TAG = "mlflow.traceName"
TRACE_USER_METADATA = "mlflow.trace.user"  # also a column: traces.user_id
SOURCE_RUN_METADATA = "mlflow.sourceRun"  # the run a trace was made in (evaluations): traces.evaluation
# MLflow returns these metadata keys from columns since 3.17; the warehouse keeps them as typed columns
# (traces.session_id, *_tokens, *_cost) instead of JSON strings.
PROMOTED_METADATA_KEYS = ("mlflow.trace.session", "mlflow.trace.tokenUsage", "mlflow.trace.cost")
_WAREHOUSE = "wh"
_PREVIOUS = "previous_wh"  # the file a rebuild replaces
# Costs are rounded to 1e-12 USD: MLflow's cost columns and the cost JSON its API returns differ in the
# last bit of the float, and the two sources must give the same warehouse.


def fingerprint_sql(rel: Callable[[str], str]) -> str:
    """One row per trace: a hash over everything MLflow can change after the trace was written: its trace_info
    row (status, previews, tokens, and `db_payload_generation`, which MLflow bumps when it adds spans), its tags,
    its metadata, its assessments' ids, update times and validity, and its links to runs and prompts.

    XOR of row hashes does not depend on row order; one aggregate over the tables is cheaper than aggregating
    each and joining. Rows of traces with no trace_info row are dropped (HAVING).
    """
    return f"""
    SELECT trace_id, bit_xor(h) AS fingerprint, any_value(status) AS status, any_value(timestamp_ms) AS timestamp_ms
    FROM (
        SELECT request_id AS trace_id,
               hash(experiment_id, timestamp_ms, execution_time_ms, status, client_request_id, request_preview,
                    response_preview, trace_name, session_id, input_tokens, output_tokens, total_tokens,
                    total_cost, db_payload_generation) AS h,
               status, timestamp_ms
        FROM {rel('trace_info')}
        UNION ALL
        SELECT request_id, hash('tag', key, value), NULL, NULL FROM {rel('trace_tags')}
        UNION ALL
        SELECT request_id, hash('metadata', key, value), NULL, NULL FROM {rel('trace_request_metadata')}
        UNION ALL
        SELECT trace_id, hash('assessment', assessment_id, last_updated_timestamp, CAST(valid AS BOOLEAN)), NULL, NULL
        FROM {rel('assessments')}
        UNION ALL
        SELECT source_id, hash('link', destination_type, destination_id), NULL, NULL FROM {rel('entity_associations')}
        WHERE source_type = 'trace'
    )
    GROUP BY trace_id
    HAVING count(status) > 0
    """


def written_sql(rel: Callable[[str], str], first_key: int) -> str:
    """The traces a run writes, each numbered with its key (traces.trace_key, from `first_key` on, in time order:
    keys say which traces the dimension facts have not seen yet) and with what its child rows carry of it: those
    of temp table `_changed` only, so a trace the source got after the fingerprints were read waits for the next
    run (which fingerprints it) instead of being written without a fingerprint, and then again."""
    return f"""
        SELECT request_id AS trace_id, CAST(experiment_id AS VARCHAR) AS experiment_id, timestamp_ms,
               {first_key} - 1 + row_number() OVER (ORDER BY timestamp_ms, request_id) AS trace_key
        FROM {rel('trace_info')} SEMI JOIN _changed ON _changed.trace_id = request_id"""


def contract_sql(rel: Callable[[str], str], written: str) -> dict[str, str]:
    """One SELECT per warehouse table, from relations shaped like MLflow's SQL tables, of the traces in the temp
    table `written` (`written_sql`): the child tables join it instead of reading the source's trace_info again, and
    no row of a trace the source got meanwhile is written without its trace."""
    # Child rows carry their trace's time, experiment (warehouse migration 2) and key (migration 11).
    trace_times = (
        "(SELECT trace_id AS joined_trace_id, timestamp_ms AS joined_timestamp_ms, "
        f"experiment_id AS joined_experiment_id, trace_key AS joined_trace_key FROM {written})"
    )
    return {
        "traces": f"""
            SELECT request_id, CAST(experiment_id AS VARCHAR), timestamp_ms, make_timestamp(timestamp_ms * 1000),
                   execution_time_ms, status, client_request_id, trace_name, session_id, input_tokens,
                   output_tokens, total_tokens, round(input_cost, 12), round(output_cost, 12),
                   round(total_cost, 12), request_preview, response_preview, user_value,
                   cache_read_input_tokens, cache_creation_input_tokens, cache_creation_input_tokens_above_1hr,
                   joined_trace_key, coalesce(made_in_run, false)
            FROM {rel('trace_info')} JOIN {trace_times} ON joined_trace_id = request_id LEFT JOIN (
                SELECT request_id AS user_trace_id, any_value(value) FILTER (WHERE key = '{TRACE_USER_METADATA}')
                       AS user_value, bool_or(key = '{SOURCE_RUN_METADATA}') AS made_in_run
                FROM {rel('trace_request_metadata')}
                WHERE key IN ('{TRACE_USER_METADATA}', '{SOURCE_RUN_METADATA}') GROUP BY 1
            ) ON user_trace_id = request_id""",
        # Each span's JSON is parsed once (TRY: broken JSON gives NULL, not an error); the reason is worked
        # out only for the rare rows that failed. CASE evaluates a branch only for the rows that reach it.
        "spans": f"""
            SELECT trace_id, span_id, parent_span_id, CAST(experiment_id AS VARCHAR), name, type, status,
                   parsed[1], start_time_unix_nano, end_time_unix_nano,
                   (end_time_unix_nano - start_time_unix_nano) / 1e6, model_name, model_provider,
                   TRY_CAST(usage[1] AS BIGINT), TRY_CAST(usage[2] AS BIGINT), TRY_CAST(usage[3] AS BIGINT),
                   round(total_cost, 12),
                   CASE WHEN parsed IS NULL THEN
                            CASE WHEN content IS NULL OR content = '' THEN 'span content is empty'
                                 ELSE 'span content is not valid JSON' END
                        WHEN NOT starts_with(ltrim(content), '{{') THEN 'span content is not a JSON object'
                   END,
                   joined_timestamp_ms, round(input_cost, 12), round(output_cost, 12),
                   -- the exception that failed the span: MLflow records it as the span's last `exception` event
                   CASE WHEN status = 'ERROR' THEN list_last(list_filter(
                       TRY(json_extract_string(content, '$.events[*].attributes."exception.type"')), t -> t IS NOT NULL))
                   END,
                   joined_trace_key
            FROM (
                SELECT *, TRY(json_extract_string(parsed[2], ['$.input_tokens', '$.output_tokens', '$.total_tokens'])) AS usage
                FROM (
                    SELECT *, TRY(json_extract_string(
                               content, ['$.status.message', '$.attributes."mlflow.chat.tokenUsage"'])) AS parsed
                    FROM {rel('spans')}
                )
            ) JOIN {trace_times} ON joined_trace_id = trace_id""",
        "trace_tags": f"""
            SELECT request_id, key, value, joined_experiment_id, joined_timestamp_ms, joined_trace_key
            FROM {rel('trace_tags')} JOIN {trace_times} ON joined_trace_id = request_id
            WHERE key <> '{TRACE_NAME_TAG}'
            UNION ALL
            SELECT request_id, '{TRACE_NAME_TAG}', trace_name, joined_experiment_id, joined_timestamp_ms,
                   joined_trace_key
            FROM {rel('trace_info')} JOIN {trace_times} ON joined_trace_id = request_id WHERE trace_name IS NOT NULL""",
        "trace_metadata": f"""
            SELECT request_id, key, value, joined_experiment_id, joined_timestamp_ms, joined_trace_key
            FROM {rel('trace_request_metadata')} JOIN {trace_times} ON joined_trace_id = request_id
            WHERE key NOT IN {PROMOTED_METADATA_KEYS}""",
        "trace_links": f"""
            SELECT source_id, destination_type, destination_id, created_time FROM {rel('entity_associations')}
            SEMI JOIN {trace_times} ON joined_trace_id = source_id
            WHERE source_type = 'trace'""",
        "assessments": f"""
            SELECT assessment_id, trace_id, CAST(experiment_id AS VARCHAR), name, assessment_type, value,
                   value_type,
                   CASE WHEN value_type = 'boolean' THEN CAST(value AS BOOLEAN) END,
                   CASE WHEN value_type = 'numeric' THEN CAST(value AS DOUBLE) END,
                   CASE WHEN value_type = 'string' THEN
                        CASE WHEN json_valid(value) THEN json_extract_string(value, '$') ELSE value END END,
                   error, source_type, source_id, rationale, span_id, run_id, overrides,
                   created_timestamp, last_updated_timestamp, CAST(valid AS BOOLEAN), joined_timestamp_ms,
                   assessment_metadata,
                   -- MLflow's numeric reading of a value (trace_analytics.assessment_aggregate): booleans and
                   -- yes/no answers as 1/0, finite numbers as themselves; only the numbers are "numeric"
                   CASE WHEN value_type = 'boolean' THEN CASE WHEN CAST(value AS BOOLEAN) THEN 1.0 ELSE 0.0 END
                        WHEN value_type = 'numeric' AND isfinite(TRY_CAST(value AS DOUBLE)) THEN CAST(value AS DOUBLE)
                        WHEN value_type = 'string' THEN
                             CASE lower(trim(TRY(json_extract_string(value, '$')), e' \t\n\r\x0b\x0c'))
                                  WHEN 'yes' THEN 1.0 WHEN 'no' THEN 0.0 END
                   END,
                   coalesce(value_type = 'numeric' AND isfinite(TRY_CAST(value AS DOUBLE)), false),
                   joined_trace_key
            FROM (
                SELECT *, CASE WHEN value IS NULL OR trim(value) = 'null' THEN NULL  -- no value: a failed judge run
                               WHEN NOT json_valid(value) THEN 'string'
                               WHEN json_type(value) = 'BOOLEAN' THEN 'boolean'
                               WHEN json_type(value) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN 'numeric'
                               WHEN json_type(value) = 'VARCHAR' THEN 'string'
                               ELSE 'json' END AS value_type
                FROM {rel('assessments')}
            ) JOIN {trace_times} ON joined_trace_id = trace_id""",
    }


class ExtractRefused(RuntimeError):
    """The source does not look like the store this warehouse copies; the message names both and the way out."""


@dataclass
class ExtractResult:
    mode: str  # "full" | "incremental" | "unchanged"
    source: str
    source_traces: int
    changed_traces: int
    deleted_traces: int
    rows: dict[str, int] = field(default_factory=dict)
    bad_spans: list[tuple[str, str, str]] = field(default_factory=list)  # (trace_id, span_id, reason)
    bad_span_count: int = 0
    seconds: float = 0.0
    rebuilt: str | None = None  # why the warehouse file was rebuilt, if it was


def extract_traces(
    source: TraceSource,
    warehouse_path: str,
    *,
    full_refresh: bool = False,
    switch_source: bool = False,
    max_delete_share: float = DEFAULT_MAX_DELETE_SHARE,
    memory_limit: str = "512MB",
    progress: Callable[[str], None] = log.info,
) -> ExtractResult:
    """Bring the warehouse in line with the source; see the module docstring for how.

    A full refresh (and `switch_source`) builds a new warehouse file and swaps it in; an incremental run that
    finds the file damaged does the same. `switch_source` also accepts a source other than the one the
    warehouse copies, and an extract deleting more than `max_delete_share` of the warehouse's traces."""
    options = dict(switch_source=switch_source, max_delete_share=max_delete_share, memory_limit=memory_limit,
                   progress=progress)
    rebuild = full_refresh or switch_source
    try:
        return _extract(source, warehouse_path, rebuild=rebuild, **options)
    except (duckdb.FatalException, WarehouseDamaged) as exc:
        if rebuild:
            raise
        reason = f"the warehouse file is damaged ({str(exc).splitlines()[0]})"
        progress(f"{reason}: rebuilding it from the source")
        result = _extract(source, warehouse_path, rebuild=True, **options)
        result.rebuilt = reason
        return result


def _extract(source: TraceSource, warehouse_path: str, *, rebuild: bool, switch_source: bool,
             max_delete_share: float, memory_limit: str, progress: Callable[[str], None]) -> ExtractResult:
    started = time.monotonic()
    Path(warehouse_path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(
        config={
            "memory_limit": memory_limit,
            "temp_directory": str(Path(warehouse_path).parent / ".duckdb_tmp"),
            "preserve_insertion_order": False,  # rows have no order in the warehouse; lets inserts run in parallel
        }
    )
    # No "PRAGMA disable_checkpoint_on_shutdown": every close would then leave a WAL for the next opener to replay,
    # the one path on which DuckDB 1.5.5 has damaged indexes (tests/test_warehouse.py); closing checkpoints.
    try:
        attach_with_retry(source, con)

        def rel(table: str) -> str:
            return source.relation(con, table, only_changed=False)

        source_read_ms = int(time.time() * 1000)
        con.execute(f"CREATE TEMP TABLE _source_state AS {fingerprint_sql(rel)}")
        source_traces = con.execute("SELECT count(*) FROM _source_state").fetchone()[0]
        progress(f"fingerprinted {source_traces} traces in {source.label}")
        run = functools.partial(_copy, con, source, source_read_ms=source_read_ms, started=started,
                                switch_source=switch_source, max_delete_share=max_delete_share, progress=progress)
        if rebuild:
            with rebuilding(con, warehouse_path, _WAREHOUSE, previous=_PREVIOUS):
                result = run(state=_PREVIOUS, rebuild=True)
            progress(f"swapped the rebuilt warehouse into {warehouse_path}")
            return result
        attach(con, warehouse_path, _WAREHOUSE)
        migrate(con, catalog=_WAREHOUSE)
        check_integrity(con, _WAREHOUSE)
        return run(state=_WAREHOUSE, rebuild=False)
    finally:
        try:
            con.close()
        except duckdb.Error:  # a fatal error has already invalidated the database
            pass


def _copy(con: duckdb.DuckDBPyConnection, source: TraceSource, *, state: str, rebuild: bool, source_read_ms: int,
          started: float, switch_source: bool, max_delete_share: float,
          progress: Callable[[str], None]) -> ExtractResult:
    """Diff the source against the fingerprints in catalog `state` and write the changes into the warehouse
    (`_WAREHOUSE`, a fresh file when `rebuild`) in one transaction."""
    con.execute(f"""
        CREATE TEMP TABLE _changed AS
        SELECT s.trace_id FROM _source_state s
        LEFT JOIN {state}._trace_state w USING (trace_id)
        WHERE ? OR w.trace_id IS NULL OR w.fingerprint <> s.fingerprint
           OR s.status = 'IN_PROGRESS' OR w.status = 'IN_PROGRESS'""", [rebuild])
    con.execute(f"""
        CREATE TEMP TABLE _deleted AS
        SELECT trace_id FROM {state}._trace_state ANTI JOIN _source_state USING (trace_id)""")
    changed = con.execute("SELECT count(*) FROM _changed").fetchone()[0]
    deleted = con.execute("SELECT count(*) FROM _deleted").fetchone()[0]
    existing = con.execute(f"SELECT count(*) FROM {state}._trace_state").fetchone()[0]
    if not switch_source:
        _refuse_unexpected_source(con, state, source, deleted, existing, max_delete_share)
    mode = "full" if rebuild or existing == 0 else "incremental"
    result = ExtractResult(mode, source.label, con.execute("SELECT count(*) FROM _source_state").fetchone()[0],
                           changed, deleted)
    progress(f"{changed} new or changed traces, {deleted} deleted ({mode} run)")
    if changed == 0 and deleted == 0 and not rebuild:
        result.mode = "unchanged"
        result.seconds = time.monotonic() - started
        con.execute("BEGIN")
        _copy_experiments(con, source)  # renamed or deleted experiments change no trace
        _record_run(con, result, source, source_read_ms)
        con.execute("COMMIT")
        progress("warehouse is up to date: nothing changed in the source")
        return result

    every_trace = changed == result.source_traces

    @functools.cache  # a targeted source stages each table once
    def changed_rel(table: str) -> str:
        return source.relation(con, table, only_changed=not every_trace)

    # Keys are never given twice, also after the traces holding the highest ones were deleted.
    first_key = 1 + con.execute(f"""
        SELECT greatest((SELECT coalesce(max(trace_key), 0) FROM {_WAREHOUSE}.traces),
                        (SELECT coalesce(max(last_trace_key), 0) FROM {_WAREHOUSE}._extract_runs))""").fetchone()[0]
    con.execute(f"CREATE TEMP TABLE _written AS {written_sql(changed_rel, first_key)}")
    statements = contract_sql(changed_rel, "_written")  # a targeted source stages the changed traces' rows here
    progress("read the changed traces' rows from the source")
    # Rows to remove: traces gone from the source and changed traces the warehouse already has (none in a new file).
    con.execute(f"""
        CREATE TEMP TABLE _replaced AS
        SELECT trace_id FROM _changed SEMI JOIN {_WAREHOUSE}._trace_state USING (trace_id)
        UNION ALL SELECT trace_id FROM _deleted""")
    replaced = 0 if rebuild else con.execute("SELECT count(*) FROM _replaced").fetchone()[0]
    con.execute("BEGIN")
    for table in (*CONTRACT_TABLES, "_trace_state") if replaced else ():
        con.execute(f"DELETE FROM {_WAREHOUSE}.{table} WHERE trace_id IN (SELECT trace_id FROM _replaced)")
    for table in CONTRACT_TABLES:
        t0 = time.monotonic()
        rows = con.execute(f"INSERT INTO {_WAREHOUSE}.{table} {statements[table]}").fetchone()[0]
        result.rows[table] = rows
        elapsed = time.monotonic() - t0
        progress(f"{table}: {rows} rows in {elapsed:.1f}s ({rows / max(elapsed, 1e-6):,.0f} rows/s)")
    con.execute(f"""
        INSERT INTO {_WAREHOUSE}._trace_state
        SELECT trace_id, ?, fingerprint, status FROM _source_state SEMI JOIN _changed USING (trace_id)""",
        [source.label])
    _copy_experiments(con, source)
    result.bad_span_count, result.bad_spans = _bad_spans(con)
    result.seconds = time.monotonic() - started
    _record_run(con, result, source, source_read_ms)
    con.execute("COMMIT")
    progress(f"committed {changed} traces in {time.monotonic() - started:.1f}s")
    for trace_id, span_id, reason in result.bad_spans:
        log.warning("span %s of trace %s kept without parsed fields: %s", span_id, trace_id, reason)
    return result


def _refuse_unexpected_source(con: duckdb.DuckDBPyConnection, state: str, source: TraceSource, deleted: int,
                              existing: int, max_delete_share: float) -> None:
    """A warehouse copies one tracking store: another store, or one that lost most of its traces, is much
    more likely a configuration mistake (a changed MLFLOW_TRACKING_URI) than what the user wants copied."""
    recorded = con.execute(
        f"""SELECT tracking_store FROM {state}._extract_runs WHERE tracking_store IS NOT NULL
            ORDER BY run_started_at DESC LIMIT 1""").fetchone()
    way_out = "If that is what you want, run `llmops extract --switch-source` to rebuild the warehouse from it."
    if recorded and recorded[0] != store_identity(source.uri):
        raise ExtractRefused(
            f"This warehouse copies the tracking store {recorded[0]}, but the source is now "
            f"{store_identity(source.uri)}: check MLFLOW_TRACKING_URI. {way_out}")
    if deleted and deleted > max_delete_share * existing:
        raise ExtractRefused(
            f"{store_identity(source.uri)} no longer has {deleted} of the warehouse's {existing} traces "
            f"({deleted / existing:.0%}, more than LLMOPS_MAX_DELETE_SHARE={max_delete_share:g}); nothing was "
            f"deleted. Check MLFLOW_TRACKING_URI. {way_out}")


def _copy_experiments(con: duckdb.DuckDBPyConnection, source: TraceSource) -> None:
    """Replace the warehouse's experiments with the source's (a few rows: cheaper than diffing them)."""
    con.execute(f"DELETE FROM {_WAREHOUSE}.experiments")
    con.execute(f"""
        INSERT INTO {_WAREHOUSE}.experiments
        SELECT CAST(experiment_id AS VARCHAR), name, lifecycle_stage, creation_time, last_update_time
        FROM {source.relation(con, 'experiments', only_changed=False)}""")


def _record_run(con: duckdb.DuckDBPyConnection, result: ExtractResult, source: TraceSource,
                source_read_ms: int) -> None:
    con.execute(
        f"""INSERT INTO {_WAREHOUSE}._extract_runs BY NAME
            SELECT now()::TIMESTAMP AS run_started_at, ? AS source, ? AS mode, ? AS source_traces,
                   ? AS changed_traces, ? AS deleted_traces, (SELECT max(timestamp_ms) FROM _source_state)
                   AS max_timestamp_ms, (SELECT max(last_updated_ms) FROM {_WAREHOUSE}.assessments)
                   AS max_assessment_updated_ms, ? AS seconds, ? AS source_read_ms, ? AS tracking_store,
                   (SELECT max(trace_key) FROM {_WAREHOUSE}.traces) AS last_trace_key""",
        [result.source, result.mode, result.source_traces, result.changed_traces, result.deleted_traces,
         result.seconds, source_read_ms, store_identity(source.uri)],
    )


def _bad_spans(con: duckdb.DuckDBPyConnection, shown: int = 20) -> tuple[int, list[tuple[str, str, str]]]:
    query = f"""
        FROM {_WAREHOUSE}.spans SEMI JOIN _changed USING (trace_id)
        WHERE content_error IS NOT NULL"""
    count = con.execute(f"SELECT count(*) {query}").fetchone()[0]
    rows = con.execute(f"SELECT trace_id, span_id, content_error {query} ORDER BY 1, 2 LIMIT {shown}").fetchall()
    return count, rows
