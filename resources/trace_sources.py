"""Where traces come from: MLflow's SQL tracking database (fast path) or its client/REST API.

Both sources hand the extractor the same thing: relations shaped like MLflow's own SQL tables
(`trace_info`, `spans`, `trace_tags`, `trace_request_metadata`, `assessments`), visible inside a
DuckDB connection. The extractor turns them into the warehouse contract with one set of SQL
(`assets/traces/extract.py`), so both sources give the same warehouse by construction.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import duckdb

from resources.settings import mask_uri, scrub
from resources.source_contract import RAW_COLUMNS, TRACE_ID_COLUMN, SourceError, TraceSource, call_with_retries

# MLflow 3.17 moved tokens, cost, session and trace name into trace_info/spans columns in this revision.
FIRST_SUPPORTED_REVISION = "75868b020152"


POSTGRES_SCHEMES = ("postgresql", "postgres")


def uri_scheme(uri: str) -> str:
    """`postgresql` for `postgresql+psycopg2://...`: the scheme without SQLAlchemy's driver suffix."""
    return uri.split("://")[0].split("+")[0]


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///` tracking URI (absolute), None for any other URI."""
    return Path(os.path.abspath(uri.removeprefix("sqlite:///").split("?")[0])) if uri.startswith("sqlite:///") else None


def store_identity(uri: str) -> str:
    """The tracking store a URI names, as a warehouse records it: absolute for SQLite files, credentials masked,
    the same whichever reader (sql or api) reads it."""
    path = sqlite_path(uri)
    return f"sqlite:///{path}" if path else mask_uri(uri)


def _projection(table: str) -> str:
    return ", ".join(f'"{c}"' for c in RAW_COLUMNS[table])


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scanner_extension_path(name: str) -> str:
    """The DuckDB extension shipped in the PyPI wheel `duckdb-extension-<name>` (no network needed)."""
    package = importlib.import_module(f"duckdb_extension_{name}")
    version = duckdb.__version__
    path = Path(package.__file__).parent / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise SourceError(f"No {name} extension for DuckDB {version} at {path}; reinstall the project.")
    return str(path)


class SqlTrackingStore:
    """MLflow's SQL tracking database (SQLite or PostgreSQL), read inside DuckDB's engine by its scanner."""

    # Up to this many changed traces are read through the database's trace-id indexes; beyond it a full
    # scan filtered in DuckDB is cheaper.
    targeted_read_limit = 50_000
    attach_retry_s = 3.5  # a busy SQLite file or a restarting database: waits of 0.5, 1 and 2 s

    def __init__(self, uri: str, progress: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.uri = uri
        self.label = f"sql:{mask_uri(uri)}"
        self.progress = progress or (lambda message: None)
        self.warn = warn or self.progress
        if uri.startswith("sqlite:///"):
            self.scanner, self.query_function = "sqlite_scanner", "sqlite_query"
            self.target, self.attach_type = str(sqlite_path(uri)), "sqlite"
        elif uri_scheme(uri) in POSTGRES_SCHEMES:
            self.scanner, self.query_function = "postgres_scanner", "postgres_query"
            # libpq takes the URI without SQLAlchemy's "+driver" suffix.
            self.target, self.attach_type = "postgresql://" + uri.split("://", 1)[1], "postgres"
        else:
            raise SourceError(f"The direct SQL reader reads sqlite:/// and postgresql:// stores, not {mask_uri(uri)}")

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.attach_type == "sqlite" and not Path(self.target).exists():
            raise SourceError(
                f"MLflow tracking store {mask_uri(self.uri)} does not exist. Seed it with `llmops seed-demo` or "
                "point MLFLOW_TRACKING_URI at your store."
            )
        con.execute(f"LOAD {_sql_string(scanner_extension_path(self.scanner))}")
        con.execute(f"ATTACH IF NOT EXISTS {_sql_string(self.target)} AS src (TYPE {self.attach_type}, READ_ONLY)")
        check_schema_revision(con, self.uri)

    def relation(self, con: duckdb.DuckDBPyConnection, table: str, only_changed: bool) -> str:
        scan = f"SELECT {_projection(table)} FROM src.{table}"
        if not only_changed:
            return f"({scan})"
        key = TRACE_ID_COLUMN[table]
        trace_ids = [row[0] for row in con.execute("SELECT trace_id FROM _changed").fetchall()]
        if len(trace_ids) > self.targeted_read_limit:
            return f"({scan} WHERE {key} IN (SELECT trace_id FROM _changed))"
        # Index lookups in the database itself (the scanners do not push these filters down), in a few
        # chunks that DuckDB reads in parallel.
        staged, size = f"_raw_{table}", max(1, min(5_000, -(-len(trace_ids) // 4)))
        chunks = [
            f"SELECT {_projection(table)} FROM {table} WHERE {key} IN "
            f"({', '.join(_sql_string(t) for t in trace_ids[start : start + size])})"
            for start in range(0, len(trace_ids), size)
        ] or [f"SELECT {_projection(table)} FROM {table} WHERE false"]
        union = " UNION ALL ".join(f"SELECT * FROM {self.query_function}('src', {_sql_string(q)})" for q in chunks)
        # Pass-through query columns may come back untyped: the empty scan of the table gives them their types.
        con.execute(f"CREATE OR REPLACE TEMP TABLE {staged} AS {scan} LIMIT 0")
        con.execute(f"INSERT INTO {staged} {union}")
        return staged


def mlflow_revisions() -> dict[str, tuple[str, ...]]:
    """Each alembic revision of the installed MLflow's schema → the revisions it follows, read from the migration
    scripts' `revision`/`down_revision` assignments without running them: alembic's own loader executes every
    script, which imports all of MLflow (~2 s of every extract's start-up)."""
    import ast
    import importlib.util

    folder = Path(importlib.util.find_spec("mlflow").submodule_search_locations[0]) / "store" / "db_migrations"
    revisions = {}
    for script in (folder / "versions").glob("*.py"):
        assigned = {target.id: node.value for node in ast.parse(script.read_text()).body
                    if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
        if "revision" in assigned:
            down = ast.literal_eval(assigned["down_revision"]) if "down_revision" in assigned else None
            revisions[ast.literal_eval(assigned["revision"])] = (
                () if down is None else (down,) if isinstance(down, str) else tuple(down))
    return revisions


def _supported_revisions(revisions: dict[str, tuple[str, ...]]) -> set[str]:
    """FIRST_SUPPORTED_REVISION and every revision that follows it, up to the head."""
    followers: dict[str, list[str]] = {}
    for revision, downs in revisions.items():
        for down in downs:
            followers.setdefault(down, []).append(revision)
    supported, todo = set(), [FIRST_SUPPORTED_REVISION]
    while todo:
        if (revision := todo.pop()) not in supported:
            supported.add(revision)
            todo.extend(followers.get(revision, []))
    return supported


def check_schema_revision(con: duckdb.DuckDBPyConnection, uri: str) -> str:
    """Refuse stores older than MLflow 3.17's trace layout; return the store's alembic revision."""
    try:
        revision = con.execute("SELECT version_num FROM src.alembic_version").fetchone()[0]
    except duckdb.Error as exc:
        raise SourceError(
            f"{mask_uri(uri)} is not an MLflow tracking store (no alembic_version): {scrub(str(exc), uri)}") from None
    revisions = mlflow_revisions()
    supported = _supported_revisions(revisions)
    if revision in supported:
        return revision
    if revision not in revisions:
        # Written by a newer MLflow than ours: accept it if the 3.17 columns are there.
        columns = {
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = 'src' AND table_name = 'trace_info'"
            ).fetchall()
        }
        if {"trace_name", "session_id", "total_tokens"} <= columns:
            return revision
    raise SourceError(
        f"MLflow store {mask_uri(uri)} is at schema revision {revision}, older than MLflow 3.17's trace layout "
        f"(revision {FIRST_SUPPORTED_REVISION}). The direct SQL reader supports MLflow 3.17 and later. Either "
        "upgrade the store (`mlflow db upgrade <uri>`) or read it through MLflow's API with LLMOPS_TRACE_SOURCE=api."
    )


def source_for(uri: str, kind: str = "auto", progress: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None) -> TraceSource:
    """Pick the source for a tracking URI.

    kind: auto (sql for sqlite:/// and postgresql:// stores, api otherwise) | sql | api."""
    if kind not in ("auto", "sql", "api"):
        raise SourceError(f"LLMOPS_TRACE_SOURCE must be auto, sql or api, not {kind!r}")
    direct = uri_scheme(uri) in ("sqlite", *POSTGRES_SCHEMES)
    if kind == "api" or (kind == "auto" and not direct):
        # Imported when picked: the API reader loads MLflow's client and pyarrow, seconds the SQL reader never pays.
        from resources.api_trace_source import ApiTrackingStore

        return ApiTrackingStore(uri, progress, warn)
    if direct:
        return SqlTrackingStore(uri, progress, warn)
    raise SourceError(
        f"LLMOPS_TRACE_SOURCE=sql reads sqlite:/// and postgresql:// stores only; {mask_uri(uri)} is not one. "
        "Use LLMOPS_TRACE_SOURCE=api (or auto)."
    )


def attach_with_retry(source: TraceSource, con: duckdb.DuckDBPyConnection) -> None:
    """Attach the source, retrying transient failures for `source.attach_retry_s` (each retry logged to
    `source.warn`); the final error names the URI with secrets masked."""

    def reason(exc: Exception) -> str | None:  # a SourceError is final: retrying cannot change its answer
        return None if isinstance(exc, SourceError) else scrub(f"{type(exc).__name__}: {exc}", source.uri)

    def log_retry(why: str, retry: int, retries: int, wait_s: float) -> None:
        source.warn(f"MLflow store {mask_uri(source.uri)} not readable ({why}); retry {retry}/{retries} in "
                        f"{round(wait_s, 1):g} s")

    try:
        call_with_retries(lambda _seconds_left: source.attach(con), budget_s=source.attach_retry_s,
                          first_delay_s=0.5, retry_reason=reason, on_retry=log_retry)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any I/O or HTTP failure is retried, then reported
        # `from None`: the original error's text can hold the password; its scrubbed text is kept here.
        raise SourceError(f"Could not read the MLflow tracking store {mask_uri(source.uri)}: {reason(exc)}") from None
