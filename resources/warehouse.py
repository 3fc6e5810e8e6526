"""The DuckDB warehouse: its schema (a public contract, see README "Warehouse schema") and connections.

DuckDB lets one process write a file and locks every other process out while it does, so writers
keep their connection short and everybody opens with a retry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import dagster as dg
import duckdb
import sqlalchemy as sa
from sqlalchemy.dialects import registry
from sqlalchemy.pool import NullPool

# Each entry migrates the schema one version up. Append only: users' SQL depends on these names.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE traces (
        trace_id VARCHAR PRIMARY KEY,
        experiment_id VARCHAR NOT NULL,
        timestamp_ms BIGINT NOT NULL,
        request_time TIMESTAMP NOT NULL,          -- UTC
        execution_time_ms BIGINT,
        status VARCHAR NOT NULL,                  -- OK | ERROR | IN_PROGRESS
        client_request_id VARCHAR,
        trace_name VARCHAR,
        session_id VARCHAR,
        input_tokens BIGINT,
        output_tokens BIGINT,
        total_tokens BIGINT,
        input_cost DOUBLE,
        output_cost DOUBLE,
        total_cost DOUBLE,
        request_preview VARCHAR,
        response_preview VARCHAR
    );
    CREATE TABLE spans (
        trace_id VARCHAR NOT NULL,
        span_id VARCHAR NOT NULL,
        parent_span_id VARCHAR,
        experiment_id VARCHAR NOT NULL,
        name VARCHAR,
        span_type VARCHAR,
        status VARCHAR,
        status_message VARCHAR,
        start_time_ns BIGINT NOT NULL,
        end_time_ns BIGINT,
        duration_ms DOUBLE,
        model_name VARCHAR,
        model_provider VARCHAR,
        input_tokens BIGINT,
        output_tokens BIGINT,
        total_tokens BIGINT,
        total_cost DOUBLE,
        content_error VARCHAR                     -- why the span's JSON content could not be read
    );
    CREATE TABLE trace_tags (trace_id VARCHAR NOT NULL, key VARCHAR NOT NULL, value VARCHAR);
    CREATE TABLE trace_metadata (trace_id VARCHAR NOT NULL, key VARCHAR NOT NULL, value VARCHAR);
    CREATE TABLE assessments (
        assessment_id VARCHAR PRIMARY KEY,
        trace_id VARCHAR NOT NULL,
        experiment_id VARCHAR,
        name VARCHAR NOT NULL,
        assessment_type VARCHAR NOT NULL,         -- feedback | expectation
        value_json VARCHAR,
        value_type VARCHAR,                       -- boolean | numeric | string | json (NULL: no value, migration 6)
        bool_value BOOLEAN,
        numeric_value DOUBLE,
        string_value VARCHAR,
        error_json VARCHAR,
        source_type VARCHAR NOT NULL,
        source_id VARCHAR,
        rationale VARCHAR,
        span_id VARCHAR,
        run_id VARCHAR,
        overrides VARCHAR,
        created_ms BIGINT NOT NULL,
        last_updated_ms BIGINT NOT NULL,
        valid BOOLEAN NOT NULL
    );
    CREATE INDEX traces_client_request_id ON traces (client_request_id);
    -- Bookkeeping for incremental extraction: one fingerprint per trace, as of the last committed run.
    CREATE TABLE _trace_state (
        trace_id VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        fingerprint UBIGINT NOT NULL,
        status VARCHAR NOT NULL
    );
    CREATE TABLE _extract_runs (
        run_started_at TIMESTAMP NOT NULL,
        source VARCHAR NOT NULL,
        mode VARCHAR NOT NULL,
        source_traces BIGINT NOT NULL,
        changed_traces BIGINT NOT NULL,
        deleted_traces BIGINT NOT NULL,
        max_timestamp_ms BIGINT,
        max_assessment_updated_ms BIGINT,
        seconds DOUBLE NOT NULL
    );
    """,
    # 2: the trace's time (and, for tags, experiment) on child rows, so insights filter and bucket spans,
    # tags and assessments without joining them to traces.
    """
    ALTER TABLE spans ADD COLUMN trace_timestamp_ms BIGINT;
    ALTER TABLE trace_tags ADD COLUMN experiment_id VARCHAR;
    ALTER TABLE trace_tags ADD COLUMN trace_timestamp_ms BIGINT;
    ALTER TABLE assessments ADD COLUMN trace_timestamp_ms BIGINT;
    UPDATE spans SET trace_timestamp_ms = traces.timestamp_ms FROM traces WHERE traces.trace_id = spans.trace_id;
    UPDATE trace_tags SET experiment_id = traces.experiment_id, trace_timestamp_ms = traces.timestamp_ms
    FROM traces WHERE traces.trace_id = trace_tags.trace_id;
    UPDATE assessments SET trace_timestamp_ms = traces.timestamp_ms
    FROM traces WHERE traces.trace_id = assessments.trace_id;
    """,
    # 3: evaluation history of prompt versions (group `evals`), so pass rates can be trended with SQL.
    """
    CREATE TABLE eval_runs (
        eval_run_id VARCHAR NOT NULL,             -- the MLflow run of mlflow.genai.evaluate
        suite VARCHAR NOT NULL,
        role VARCHAR NOT NULL,                    -- candidate | production
        prompt_versions VARCHAR NOT NULL,         -- JSON {prompt name: version}
        dataset_digest VARCHAR NOT NULL,
        examples INTEGER NOT NULL,
        passed_examples INTEGER NOT NULL,
        overall_pass_rate DOUBLE NOT NULL,
        gate VARCHAR,                             -- passed | failed for candidates, NULL for baselines
        evaluated_at TIMESTAMP NOT NULL,          -- UTC
        dagster_run_id VARCHAR
    );
    CREATE TABLE eval_results (
        eval_run_id VARCHAR NOT NULL,
        example_id VARCHAR NOT NULL,
        scorer VARCHAR NOT NULL,
        passed BOOLEAN,                           -- NULL: the scorer does not apply to the example
        rationale VARCHAR,
        error VARCHAR,
        trace_id VARCHAR
    );
    """,
    # 4: when each extract started reading the source (epoch ms, this machine's clock). What the source had
    # committed by then is in the warehouse, so the labeling sensor reads feedback only up to that time.
    """
    ALTER TABLE _extract_runs ADD COLUMN source_read_ms BIGINT;
    """,
    # 5: no secondary (non-unique) index: DuckDB 1.5.5 corrupts one when it replays a WAL left by a process killed
    # between COMMIT and close (every later DELETE of those rows fails; tests/test_warehouse.py reproduces it).
    # Lookups by client_request_id scan instead. Each run records the tracking store it copied, so a warehouse
    # is never silently refilled from another store.
    """
    DROP INDEX IF EXISTS traces_client_request_id;
    ALTER TABLE _extract_runs ADD COLUMN tracking_store VARCHAR;
    """,
    # 6: an assessment whose value is JSON null (a failed judge or scorer run, its error in error_json) has no
    # value_type, so it never turns a numeric or boolean feedback name into `json`.
    """
    UPDATE assessments SET value_type = NULL WHERE value_json IS NULL OR value_json = 'null';
    """,
    # 7: the store's experiments (so an experiment with no traces yet is known, not 404), the trace's user and
    # cache token counts as columns. Every fingerprint is reset so the next run copies each trace again and
    # fills the new columns.
    """
    CREATE TABLE experiments (
        experiment_id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        lifecycle_stage VARCHAR,                  -- active | deleted
        creation_time_ms BIGINT,
        last_update_time_ms BIGINT
    );
    ALTER TABLE traces ADD COLUMN user_id VARCHAR;
    ALTER TABLE traces ADD COLUMN cache_read_input_tokens BIGINT;
    ALTER TABLE traces ADD COLUMN cache_creation_input_tokens BIGINT;
    UPDATE _trace_state SET fingerprint = 0;
    """,
    # 8: what MLflow's trace metrics and search filters read: the trace's links to runs and prompt versions
    # (mlflow.genai.evaluate and link_traces_to_run link traces to a run without metadata), its cache-creation
    # tokens for caches kept over an hour (part of MLflow's token usage), each span's input/output cost and, for a failed
    # span, the type of the exception that failed it; each assessment's metadata (a session-scoped assessment
    # names its session there) and MLflow's numeric reading of its value (booleans and yes/no as 1/0). Every
    # trace is copied again once to fill them.
    """
    CREATE TABLE trace_links (
        trace_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,                    -- what it links to: run | prompt_version | ...
        target_id VARCHAR NOT NULL,               -- the run id, `name/version`, ...
        created_ms BIGINT
    );
    ALTER TABLE traces ADD COLUMN cache_creation_input_tokens_above_1hr BIGINT;
    ALTER TABLE spans ADD COLUMN input_cost DOUBLE;
    ALTER TABLE spans ADD COLUMN output_cost DOUBLE;
    ALTER TABLE spans ADD COLUMN exception_type VARCHAR;
    ALTER TABLE assessments ADD COLUMN metadata_json VARCHAR;
    ALTER TABLE assessments ADD COLUMN aggregate_value DOUBLE;
    ALTER TABLE assessments ADD COLUMN is_numeric_value BOOLEAN;
    UPDATE _trace_state SET fingerprint = 0;
    """,
    # 9: alerts (assets/alerts): incidents, the notifications each owes its channels (an outbox: a delivery that
    # failed is retried by the next evaluation), and the endpoint health checks the endpoint rules read.
    """
    CREATE TABLE alert_incidents (
        incident_id VARCHAR PRIMARY KEY,
        rule VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        scope VARCHAR NOT NULL,                   -- the experiment id, or `endpoint:<environment>`
        experiment_id VARCHAR,                    -- null for endpoint rules
        scope_name VARCHAR NOT NULL,              -- the experiment's name, or the environment
        opened_at_ms BIGINT NOT NULL,
        resolved_at_ms BIGINT,                    -- null while open
        window_s BIGINT NOT NULL,
        direction VARCHAR NOT NULL,               -- above | below
        threshold DOUBLE NOT NULL,                -- what the value crossed (baseline rules: ratio x baseline)
        baseline DOUBLE,                          -- baseline rules: the metric over the baseline windows
        value DOUBLE NOT NULL,                    -- the metric when the incident opened
        sample_count BIGINT NOT NULL,             -- traces (endpoint checks) in the window then
        condition VARCHAR NOT NULL,               -- in words: "error_rate 0.31 > 0.05 over 1h"
        root_causes_json VARCHAR NOT NULL,        -- JSON list: the top root causes in the window at opening
        last_value DOUBLE,                        -- the latest evaluation's value
        last_evaluated_at_ms BIGINT NOT NULL
    );
    CREATE TABLE alert_notifications (
        notification_id VARCHAR PRIMARY KEY,      -- also sent, so a receiver can drop a repeat
        incident_id VARCHAR NOT NULL,
        event VARCHAR NOT NULL,                   -- opened | resolved
        channel VARCHAR NOT NULL,
        created_at_ms BIGINT NOT NULL,
        attempts INTEGER NOT NULL,
        last_attempt_at_ms BIGINT,
        delivered_at_ms BIGINT,                   -- null until delivered
        last_error VARCHAR
    );
    CREATE TABLE endpoint_checks (
        environment VARCHAR NOT NULL,
        checked_at_ms BIGINT NOT NULL,
        version INTEGER,                          -- the model version serving
        up BOOLEAN NOT NULL,
        latency_ms DOUBLE,
        reason VARCHAR                            -- why it is down
    );
    """,
    # 10: the trace's experiment and time on metadata rows too (as migration 2 did for tags), so metadata
    # dimensions are discovered and counted without joining every metadata row to its trace.
    """
    ALTER TABLE trace_metadata ADD COLUMN experiment_id VARCHAR;
    ALTER TABLE trace_metadata ADD COLUMN trace_timestamp_ms BIGINT;
    UPDATE trace_metadata SET experiment_id = traces.experiment_id, trace_timestamp_ms = traces.timestamp_ms
    FROM traces WHERE traces.trace_id = trace_metadata.trace_id;
    """,
    # 11: integer trace keys and the dimension facts (assets/insights/facts.py). `trace_key`: a number the extract
    # gives each trace it writes, in time order, never given twice (a trace copied again gets a new one), on the
    # trace and its child rows: joins and semi joins on 8-byte integers instead of 39-character ids, facts of two
    # integer columns, and a later run knows which traces it has not seen. `traces.evaluation`: the trace was made
    # inside a run (metadata mlflow.sourceRun, as every mlflow.genai.evaluate trace), so production-only counts
    # read a column instead of 12M metadata rows. The facts tables are filled by the `dimension_facts` asset.
    """
    ALTER TABLE traces ADD COLUMN trace_key BIGINT;
    ALTER TABLE traces ADD COLUMN evaluation BOOLEAN;
    UPDATE traces SET trace_key = numbered.trace_key
    FROM (SELECT trace_id, row_number() OVER (ORDER BY timestamp_ms, trace_id) AS trace_key FROM traces) AS numbered
    WHERE numbered.trace_id = traces.trace_id;
    UPDATE traces SET evaluation = trace_id IN (SELECT trace_id FROM trace_metadata WHERE key = 'mlflow.sourceRun');
    ALTER TABLE spans ADD COLUMN trace_key BIGINT;
    ALTER TABLE trace_tags ADD COLUMN trace_key BIGINT;
    ALTER TABLE trace_metadata ADD COLUMN trace_key BIGINT;
    ALTER TABLE assessments ADD COLUMN trace_key BIGINT;
    UPDATE spans SET trace_key = traces.trace_key FROM traces WHERE traces.trace_id = spans.trace_id;
    UPDATE trace_tags SET trace_key = traces.trace_key FROM traces WHERE traces.trace_id = trace_tags.trace_id;
    UPDATE trace_metadata SET trace_key = traces.trace_key FROM traces WHERE traces.trace_id = trace_metadata.trace_id;
    UPDATE assessments SET trace_key = traces.trace_key FROM traces WHERE traces.trace_id = assessments.trace_id;
    ALTER TABLE _extract_runs ADD COLUMN last_trace_key BIGINT;  -- the highest key given so far
    CREATE TABLE dimension_values (
        value_id INTEGER NOT NULL,
        name VARCHAR NOT NULL,                    -- the dimension: span.type, tools.web.fetch, tags.persona, ...
        value VARCHAR NOT NULL,                   -- its value: TOOL, error, sme, ...
        offered BOOLEAN NOT NULL                  -- a candidate for correlations (span.name: not only tools' and roots')
    );
    CREATE TABLE trace_dimension_values (trace_key BIGINT NOT NULL, value_id INTEGER NOT NULL);
    CREATE TABLE dimension_value_hours (
        experiment_id VARCHAR NOT NULL,
        hour_ms BIGINT NOT NULL,                  -- the UTC hour of the traces' time
        evaluation BOOLEAN NOT NULL,              -- of evaluation traces, or of production traces
        value_id INTEGER NOT NULL,
        traces BIGINT NOT NULL                    -- how many of its traces have the value
    );
    -- which warehouse version (highest trace key, number of traces) the facts and the hourly rollups describe
    CREATE TABLE _dimension_facts_state (covered_key BIGINT NOT NULL, covered_traces BIGINT NOT NULL);
    CREATE TABLE _insights_rollups_state (covered_key BIGINT NOT NULL, covered_traces BIGINT NOT NULL);
    """,
]

CONTRACT_TABLES = ("traces", "spans", "trace_tags", "trace_metadata", "assessments", "trace_links")
# What a rebuild refills from the source; every other table (eval history, insights, labeling) is carried over.
# The dimension facts are numbered by the traces' keys, which start again in a rebuilt file: they are built anew.
REBUILT_TABLES = (*CONTRACT_TABLES, "experiments", "_trace_state", "_schema_version", "dimension_values",
                  "trace_dimension_values", "dimension_value_hours", "_dimension_facts_state")
T = TypeVar("T")
log = logging.getLogger(__name__)


def migrate(con: duckdb.DuckDBPyConnection, catalog: str) -> None:
    """Bring the schema of the attached database `catalog` up to date."""
    con.execute(f"USE {catalog}")
    try:
        con.execute("CREATE TABLE IF NOT EXISTS _schema_version (version INTEGER NOT NULL)")
        version = con.execute("SELECT coalesce(max(version), 0) FROM _schema_version").fetchone()[0]
        for number, ddl in enumerate(MIGRATIONS[version:], start=version + 1):
            con.execute("BEGIN")
            con.execute(ddl)
            con.execute("INSERT INTO _schema_version VALUES (?)", [number])
            con.execute("COMMIT")
    finally:
        con.execute("USE memory")


def has_table(conn: sa.Connection, name: str) -> bool:
    """Whether the warehouse has table `name` (one written by an older version may not; a read-only connection
    cannot create it)."""
    return bool(conn.execute(sa.text(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND table_name = :name"),
        {"name": name}).scalar())


class WarehouseOutdated(RuntimeError):
    """The warehouse was written by an older version of the platform; the next write (an extract) migrates it."""


def check_current(conn: sa.Connection, path: str) -> None:
    """Raise WarehouseOutdated when the warehouse's schema is older than this platform's: a read-only reader cannot
    migrate it (the next extract does), and a query of a newer column fails on it."""
    version = (conn.execute(sa.text("SELECT coalesce(max(version), 0) FROM _schema_version")).scalar()
               if has_table(conn, "_schema_version") else 0)
    if version < len(MIGRATIONS):
        raise WarehouseOutdated(
            f"The warehouse {path} has schema version {version}; this version of the platform reads version "
            f"{len(MIGRATIONS)}: run `llmops extract` (or any job that writes the warehouse) to migrate it.")


class WarehouseDamaged(RuntimeError):
    """The warehouse file does not hold what its bookkeeping says; a rebuild (full refresh) repairs it."""


def check_integrity(con: duckdb.DuckDBPyConnection, catalog: str) -> None:
    """Cheap checks at the start of a write: the copied traces are exactly those the state records."""
    traces, state = con.execute(
        f"SELECT (SELECT count(*) FROM {catalog}.traces), (SELECT count(*) FROM {catalog}._trace_state)").fetchone()
    if traces != state:
        raise WarehouseDamaged(f"the warehouse holds {traces} traces but its bookkeeping records {state}")


# A writer waiting for the file's lock says so in this file beside it; readers hold off while it is fresh. Without
# it a steady stream of short read locks (the API under load) starves the writer: an extract took 12x as long.
WRITER_WAITING_SUFFIX = ".writer-waiting"
_WRITER_FRESH_S = 5.0  # a waiting writer touches the file at least every 2 s; older means the writer died


def _writer_waiting(path: str) -> bool:
    try:
        return time.time() - os.stat(path + WRITER_WAITING_SUFFIX).st_mtime < _WRITER_FRESH_S
    except OSError:
        return False


def retry_while_locked(action: Callable[[], T], timeout_s: float = 120.0, *, path: str | None = None,
                       write: bool = False) -> T:
    """Run `action` (an open or ATTACH of a DuckDB file), waiting while another process holds its lock.

    With `path`, the lock is taken fairly: a writer (`write`) announces itself while it waits, and a reader
    does not start while a writer is announced (it waits at most `timeout_s` for that too)."""
    delay, deadline = 0.05, time.monotonic() + timeout_s
    intent = Path(path + WRITER_WAITING_SUFFIX) if path and write else None
    while path and not write and _writer_waiting(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        while True:
            try:
                return action()
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                if intent is not None:
                    intent.touch()
                time.sleep(delay)
                delay = min(delay * 2, 0.25 if write else 2.0)  # readers are held off: the lock frees soon
    finally:
        if intent is not None:
            intent.unlink(missing_ok=True)


def _quoted(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def attach(con: duckdb.DuckDBPyConnection, path: str, alias: str, timeout_s: float = 120.0) -> None:
    retry_while_locked(lambda: con.execute(f"ATTACH {_quoted(path)} AS {alias}"), timeout_s, path=path, write=True)


@contextmanager
def rebuilding(con: duckdb.DuckDBPyConnection, path: str, alias: str, previous: str,
               timeout_s: float = 120.0) -> Iterator[None]:
    """Attach a new, migrated warehouse file as `alias` to be filled in place of `path`; on success it replaces
    `path` atomically (rename), on failure it is removed and `path` is untouched.

    The current file, if any, stays attached as `previous` (its write lock keeps other writers out) and every
    table but the trace copies is carried over from it: eval history, insights and labeling progress survive.
    A file that cannot be opened at all is moved aside (`<path>.damaged-<time>`) and the warehouse rebuilt
    without it; the log names the file kept.
    """
    new = f"{path}.rebuild"
    for stale in (new, f"{new}.wal"):
        Path(stale).unlink(missing_ok=True)  # left by a rebuild that was killed
    has_previous = Path(path).exists()
    if has_previous:
        try:
            attach(con, path, previous, timeout_s)
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                raise
            aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
            os.replace(path, aside)
            Path(f"{path}.wal").unlink(missing_ok=True)
            log.warning("the warehouse %s could not be opened (%s); moved it to %s and rebuilding", path, exc, aside)
            has_previous = False
    if not has_previous:
        con.execute(f"ATTACH ':memory:' AS {previous}")
    migrate(con, previous)
    con.execute(f"CHECKPOINT {previous}")  # nothing of the old file is left in a WAL the new file would inherit
    con.execute(f"ATTACH {_quoted(new)} AS {alias}")
    try:
        migrate(con, alias)
        _carry_over(con, previous, alias)
        yield
        con.execute(f"DETACH {alias}")  # checkpoints: the new file is complete, with no WAL
        os.replace(new, path)
        directory = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except BaseException:
        _detach_quietly(con, alias)
        Path(new).unlink(missing_ok=True)
        Path(f"{new}.wal").unlink(missing_ok=True)
        raise
    finally:
        # Held until after the rename, so no other writer could use the old file meanwhile. It has nothing to
        # checkpoint (checkpointed above, only read since), so closing it writes no WAL beside the new file.
        _detach_quietly(con, previous)


def _detach_quietly(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Detach if attached; after a fatal error DuckDB refuses every statement, and the error that matters is that one."""
    try:
        con.execute(f"DETACH DATABASE IF EXISTS {alias}")
    except duckdb.Error:
        pass


def _carry_over(con: duckdb.DuckDBPyConnection, source: str, target: str) -> None:
    """Copy every table except the rebuilt ones, and every view, from catalog `source` into `target`."""
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'", [source]
    ).fetchall()
    existing = {row[0] for row in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [target]).fetchall()}
    for (table,) in tables:
        if table in REBUILT_TABLES:
            continue
        if table in existing:  # created by the migrations: same columns in the same order
            con.execute(f'INSERT INTO {target}."{table}" SELECT * FROM {source}."{table}"')
        else:
            con.execute(f'CREATE TABLE {target}."{table}" AS SELECT * FROM {source}."{table}"')
    views = con.execute(
        "SELECT sql FROM duckdb_views() WHERE database_name = ? AND NOT internal", [source]).fetchall()
    if views:
        con.execute(f"USE {target}")
        try:
            for (sql,) in views:
                con.execute(sql)
        finally:
            con.execute("USE memory")


# duckdb_engine's dialect with compiled statements cached (resources/duckdb_dialect.py), loaded on first use
registry.register("duckdb.cached", "resources.duckdb_dialect", "CachingDialect")
DUCKDB_URL = "duckdb+cached:///"


def sqlalchemy_engine(path: str, read_only: bool = True, lock_timeout_s: float = 120.0) -> sa.Engine:
    """A SQLAlchemy engine on the file whose connections are opened per checkout (no pool, so nothing
    keeps the file locked between uses) and wait while another process holds the lock."""
    engine = sa.create_engine(f"{DUCKDB_URL}{path}", connect_args={"read_only": read_only}, poolclass=NullPool)

    @sa.event.listens_for(engine, "do_connect")
    def _wait_for_lock(dialect, _record, cargs, cparams):
        return retry_while_locked(lambda: dialect.connect(*cargs, **cparams), lock_timeout_s, path=path,
                                  write=not read_only)

    return engine


def attached_engine(path: str, lock_timeout_s: float = 30.0, keep_attached_s: float = 0.25) -> sa.Engine:
    """Read-only connections for a long-running server: the file is ATTACHed to one in-memory DuckDB kept for
    the process, and stays attached between requests that follow each other within `keep_attached_s` (a
    dashboard's burst): an ATTACH and the reads of a cold buffer cost 8-14 ms per request at 1M traces. It is
    DETACHed when idle that long, and before a request when a writer waits for the file (`_writer_waiting`),
    so extracts are never locked out. Checkouts take turns (one request at a time; each query uses every core
    anyway)."""
    from duckdb_engine import ConnectionWrapper

    instance = duckdb.connect()  # in memory: holds no file
    turn = threading.Lock()
    quoted = "'" + path.replace("'", "''") + "'"
    engine = sa.create_engine(f"{DUCKDB_URL}:memory:", poolclass=NullPool)
    attached = {"since_use": None}  # monotonic time of the last request's end while attached; None: detached

    def detach() -> None:
        attached["since_use"] = None
        instance.execute("DETACH DATABASE IF EXISTS warehouse")

    def detach_if_idle() -> None:
        if turn.acquire(blocking=False):  # else a request runs, and its end schedules the next check
            try:
                used = attached["since_use"]
                if used is not None and time.monotonic() - used >= keep_attached_s:
                    detach()
            finally:
                turn.release()

    @sa.event.listens_for(engine, "do_connect")
    def _attach(_dialect, _record, _cargs, _cparams):
        turn.acquire()
        try:
            if attached["since_use"] is not None and _writer_waiting(path):
                detach()
            if attached["since_use"] is None:
                retry_while_locked(lambda: instance.execute(f"ATTACH {quoted} AS warehouse (READ_ONLY)"),
                                   lock_timeout_s, path=path)
                attached["since_use"] = time.monotonic()
            con = instance.cursor()
            con.execute("USE warehouse")
            return ConnectionWrapper(con)
        except BaseException:
            turn.release()
            raise

    @sa.event.listens_for(engine, "close")
    def _release(dbapi_connection, _record):
        try:
            if _writer_waiting(path):
                dbapi_connection.execute("USE memory")  # a database in use cannot be detached
                detach()
            else:
                attached["since_use"] = time.monotonic()
                timer = threading.Timer(keep_attached_s, detach_if_idle)
                timer.daemon = True
                timer.start()
        finally:
            turn.release()

    return engine


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (`LLMOPS_DUCKDB_PATH`, default `$LLMOPS_HOME/warehouse.duckdb`)."""

    path: str
    lock_timeout_s: float = 120.0

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not Path(self.path).exists():
            raise FileNotFoundError(
                f"The warehouse {self.path} does not exist yet: materialize the `traces` group first."
            )
        con = retry_while_locked(lambda: duckdb.connect(self.path, read_only=read_only), self.lock_timeout_s,
                                 path=self.path, write=not read_only)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def migrated(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection on the warehouse with its schema brought up to date (created if missing)."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect()
        try:
            attach(con, self.path, "warehouse", self.lock_timeout_s)
            migrate(con, catalog="warehouse")
            con.execute("USE warehouse")
            yield con
        finally:
            con.close()

    def engine(self, read_only: bool = True) -> sa.Engine:
        """For SQLAlchemy Core queries (the insights); connections are short-lived like `connect`'s."""
        return sqlalchemy_engine(self.path, read_only, self.lock_timeout_s)
