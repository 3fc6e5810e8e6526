"""Data-contract checks and previews of the warehouse (plain functions over a DuckDB connection)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from assets.traces.extract import ExtractResult
from resources.warehouse import CONTRACT_TABLES

KEYS = {
    "traces": ("trace_id",),
    "spans": ("trace_id", "span_id"),
    "trace_tags": ("trace_id", "key"),
    "trace_metadata": ("trace_id", "key"),
    "assessments": ("assessment_id",),
    "trace_links": ("trace_id", "kind", "target_id"),
}


@dataclass
class WarehouseSummary:
    rows: dict[str, int]
    latest_traces_md: str


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def warehouse_summary(con: duckdb.DuckDBPyConnection, preview_rows: int = 10) -> WarehouseSummary:
    rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CONTRACT_TABLES}
    cursor = con.execute(
        """SELECT request_time, trace_name, status, execution_time_ms, total_tokens, client_request_id
           FROM traces ORDER BY timestamp_ms DESC LIMIT ?""",
        [preview_rows],
    )
    columns = [d[0] for d in cursor.description]
    return WarehouseSummary(rows, markdown_table(columns, cursor.fetchall()))


def contract_checks(
    con: duckdb.DuckDBPyConnection, result: ExtractResult
) -> dict[tuple[str, str], tuple[bool, dict]]:
    """(table, check name) -> (passed, metadata) for every check of the `traces` group."""
    checks: dict[tuple[str, str], tuple[bool, dict]] = {}
    warehouse_traces = con.execute("SELECT count(*) FROM traces").fetchone()[0]
    checks[("traces", "matches_source")] = (
        warehouse_traces == result.source_traces,
        {"warehouse_traces": warehouse_traces, "source_traces": result.source_traces},
    )
    for table in CONTRACT_TABLES:
        key = ", ".join(KEYS[table])
        duplicates = con.execute(
            f"SELECT count(*) FROM (SELECT {key} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
        checks[(table, "unique_keys")] = (duplicates == 0, {"duplicate_keys": duplicates, "key": key})
        if table != "traces":
            orphans = con.execute(f"SELECT count(*) FROM {table} ANTI JOIN traces USING (trace_id)").fetchone()[0]
            checks[(table, "no_orphans")] = (orphans == 0, {"orphan_rows": orphans})
    unreadable = con.execute(
        "SELECT trace_id, span_id, content_error FROM spans WHERE content_error IS NOT NULL ORDER BY 1, 2"
    ).fetchall()
    checks[("spans", "content_parsed")] = (
        not unreadable,
        {"unreadable_spans": len(unreadable), "examples": markdown_table(["trace_id", "span_id", "reason"], unreadable[:10])},
    )
    return checks
