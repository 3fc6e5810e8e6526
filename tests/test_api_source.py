"""The API source, reading a real `mlflow server` on 127.0.0.1, gives the same warehouse as the SQL source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import AssessmentSource, AssessmentSourceType

from assets.traces.extract import extract_traces
from resources.api_trace_source import ApiTrackingStore
from resources.trace_sources import SqlTrackingStore, source_for
from tests.conftest import PROJECT_DIR, Store, free_port
from tests.conftest import mlflow_server as real_mlflow_server
from tests.oracle import table_dump

CONTRACT = ("traces", "spans", "trace_tags", "trace_metadata", "assessments")


@pytest.fixture
def mlflow_server(store: Store, tmp_path: Path):
    with real_mlflow_server(store, free_port(), tmp_path) as url:
        yield url


def contract_dump(path: str) -> dict[str, list]:
    return {table: rows for table, rows in table_dump(path).items() if table in CONTRACT}


def test_api_source_over_rest_equals_sql_source(store: Store, mlflow_server: str, tmp_path: Path):
    via_rest, via_sql = str(tmp_path / "rest.duckdb"), str(tmp_path / "sql.duckdb")
    assert isinstance(source_for(mlflow_server), ApiTrackingStore)
    result = extract_traces(source_for(mlflow_server), via_rest)
    assert result.source_traces == len(store.trace_ids)
    extract_traces(SqlTrackingStore(store.uri), via_sql)
    assert_same(contract_dump(via_rest), contract_dump(via_sql))

    # Late feedback and a late tag, written through the server, show up on the next REST run.
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.log_feedback(trace_id=store.trace_ids[4], name="user_thumbs", value=False, rationale="late",
                        source=AssessmentSource(AssessmentSourceType.HUMAN, "late-user"))
    mlflow.set_trace_tag(store.trace_ids[9], "escalated", "yes")
    again = extract_traces(source_for(mlflow_server), via_rest)
    assert (again.mode, again.changed_traces) == ("incremental", 2)
    extract_traces(SqlTrackingStore(store.uri), via_sql)
    assert_same(contract_dump(via_rest), contract_dump(via_sql))


def test_sources_import_one_way_and_the_sql_reader_without_mlflow():
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, resources.trace_sources; print('mlflow' in sys.modules); "
         "del sys.modules['resources.trace_sources']; import resources.api_trace_source; "
         "print('resources.trace_sources' in sys.modules)"],
        cwd=PROJECT_DIR, capture_output=True, text=True, check=True,
    )
    assert imported.stdout.split() == ["False", "False"]


def assert_same(rest: dict[str, list], sql: dict[str, list]) -> None:
    for table in CONTRACT:
        only_rest, only_sql = set(rest[table]) - set(sql[table]), set(sql[table]) - set(rest[table])
        assert not only_rest and not only_sql, f"{table}: REST has {sorted(only_rest)[:2]}, SQL has {sorted(only_sql)[:2]}"
