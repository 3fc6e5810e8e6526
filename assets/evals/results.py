"""Evaluation outcomes into the warehouse (`eval_runs`, `eval_results`), in one transaction per run."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb

from assets.evals.runner import EvalOutcome


def write_eval_results(con: duckdb.DuckDBPyConnection, outcomes: list[EvalOutcome], gate: dict[str, str],
                       dagster_run_id: str | None) -> int:
    """Append the outcomes; `gate` maps a candidate's run id to passed/failed. Returns result rows written."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(o.run_id, r.example_id, r.scorer, r.passed, r.rationale, r.error, r.trace_id)
            for o in outcomes for r in o.results]
    con.execute("BEGIN")
    try:
        con.executemany(
            "INSERT INTO eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(o.run_id, o.suite, o.role, json.dumps(o.prompt_versions, sort_keys=True), o.dataset_digest, o.examples,
              o.passed_examples, o.overall_pass_rate, gate.get(o.run_id), now, dagster_run_id) for o in outcomes],
        )
        if rows:
            con.executemany("INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(rows)
