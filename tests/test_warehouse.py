"""The warehouse file survives kills and mistakes: DuckDB's WAL-replay bug, rebuilds that swap in a new file,
damaged files repaired, and a warehouse that refuses to be refilled from another store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import mlflow
import pytest

from assets.traces.extract import ExtractRefused, extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.conftest import Store
from tests.oracle import downgrade, table_dump
from tests.test_extract import assert_matches_mlflow

KILLED_AFTER_COMMIT = """
import duckdb, os, signal, sys
con = duckdb.connect(sys.argv[1])
con.execute("BEGIN")
con.execute(sys.argv[2])
con.execute("COMMIT")
os.kill(os.getpid(), signal.SIGKILL)  # before close: the committed rows are only in the WAL
"""


def commit_then_die(path: str, sql: str) -> None:
    """A writer process that commits `sql` and is SIGKILLed before it closes (no checkpoint)."""
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_COMMIT, path, sql], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{path}.wal").exists()


@pytest.mark.parametrize(("ddl", "damaged"), [
    ("CREATE TABLE t (id VARCHAR PRIMARY KEY, c VARCHAR); CREATE INDEX t_c ON t (c)", True),
    ("CREATE TABLE t (id VARCHAR, c VARCHAR); CREATE INDEX t_c ON t (c)", True),
    ("CREATE TABLE t (id VARCHAR PRIMARY KEY, c VARCHAR)", False),
    ("CREATE TABLE t (id VARCHAR PRIMARY KEY, c VARCHAR UNIQUE)", False),
])
def test_duckdb_replays_a_wal_into_a_damaged_secondary_index(tmp_path: Path, ddl: str, damaged: bool):
    """The minimal reproduction, DuckDB alone (1.5.5): rows committed by a process killed before close are
    replayed from the WAL; after the replaying connection closes, a non-unique index has lost them and every
    DELETE of them fails fatally. Primary keys and UNIQUE constraints survive. Hence migration 5 (no secondary
    index in the warehouse). If this starts failing for the `True` rows, DuckDB has fixed the bug."""
    path = str(tmp_path / "repro.duckdb")
    with duckdb.connect(path) as con:
        con.execute(ddl)
        con.execute("INSERT INTO t SELECT 'tr-' || md5(i::VARCHAR), 'req-' || md5('x' || i) FROM range(60) r(i)")
    commit_then_die(path, "INSERT INTO t SELECT 'tr-' || md5(i::VARCHAR), 'req-' || md5('x' || i) FROM range(60, 67) r(i)")
    duckdb.connect(path).close()  # replays the WAL; checkpoints on close
    with duckdb.connect(path) as con:
        if damaged:
            with pytest.raises(duckdb.FatalException, match="Failed to delete all rows from index"):
                con.execute("DELETE FROM t")
        else:
            con.execute("DELETE FROM t")
            assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_the_warehouse_has_no_secondary_index(seeded_store: Store, warehouse_path: str):
    extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT index_name FROM duckdb_indexes() WHERE NOT is_unique").fetchall() == []


def _rewrite_first_traces_and_die(path: str, n: int = 5) -> list[str]:
    """What an extract does to changed traces (delete, insert), committed by a writer killed before close."""
    with duckdb.connect(path, read_only=True) as con:
        ids = [r[0] for r in con.execute(f"SELECT trace_id FROM traces ORDER BY trace_id LIMIT {n}").fetchall()]
    commit_then_die(path, """
        CREATE TEMP TABLE kept AS SELECT * FROM traces WHERE trace_id IN (SELECT trace_id FROM traces ORDER BY 1 LIMIT 5);
        DELETE FROM traces WHERE trace_id IN (SELECT trace_id FROM kept);
        INSERT INTO traces SELECT * FROM kept;""")
    duckdb.connect(path).close()  # someone opens the file: the WAL replays into the index
    return ids


def test_a_warehouse_wedged_before_migration_5_is_repaired_by_the_next_extract(store: Store, warehouse_path: str):
    """A version-4 warehouse (with its client_request_id index) wedged by a kill between commit and close."""
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    downgrade(warehouse_path, 4)  # with the client_request_id index
    for trace_id in _rewrite_first_traces_and_die(warehouse_path):
        mlflow.set_trace_tag(trace_id, "after_the_kill", "yes")
    result = extract_traces(source, warehouse_path)  # migration 5 drops the damaged index before the DELETE
    # (migration 7 has every trace copied again: the replayed rows are deleted with the rest)
    assert (result.mode, result.changed_traces, result.rebuilt) == ("incremental", len(store.trace_ids), None)
    assert_matches_mlflow(store, warehouse_path)


def test_an_extract_that_finds_the_file_damaged_rebuilds_it(store: Store, warehouse_path: str):
    """A user's own secondary index is damaged the same way: the incremental DELETE fails fatally, and the
    extract rebuilds the warehouse into a new file instead of failing on every run from then on."""
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    with duckdb.connect(warehouse_path) as con:
        con.execute("CREATE INDEX users_own_index ON traces (client_request_id)")
        con.execute("CREATE TABLE eval_notes AS SELECT 'keep me' AS note")
    for trace_id in _rewrite_first_traces_and_die(warehouse_path):
        mlflow.set_trace_tag(trace_id, "after_the_kill", "yes")
    result = extract_traces(source, warehouse_path)
    assert result.mode == "full" and "damaged" in result.rebuilt
    assert_matches_mlflow(store, warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT note FROM eval_notes").fetchall() == [("keep me",)]
    assert extract_traces(source, warehouse_path).mode == "unchanged"


def test_an_extract_rebuilds_a_warehouse_whose_rows_disagree_with_its_bookkeeping(store: Store, warehouse_path: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    with duckdb.connect(warehouse_path) as con:
        con.execute("DELETE FROM traces WHERE trace_id = ?", [store.trace_ids[3]])  # by hand, behind the extract's back
    result = extract_traces(source, warehouse_path)
    n = len(store.trace_ids)
    assert result.rebuilt == f"the warehouse file is damaged (the warehouse holds {n - 1} traces but its bookkeeping records {n})"
    assert_matches_mlflow(store, warehouse_path)


def test_full_refresh_swaps_in_a_new_file_and_keeps_every_other_table(store: Store, warehouse_path: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    with duckdb.connect(warehouse_path) as con:
        con.execute("""INSERT INTO eval_runs VALUES ('run-1', 'suite', 'candidate', '{}', 'digest', 10, 9, 0.9,
                       'passed', now()::TIMESTAMP, 'dagster-run')""")
        con.execute("CREATE TABLE my_notes (trace_id VARCHAR, note VARCHAR)")
        con.execute("INSERT INTO my_notes SELECT trace_id, 'seen' FROM traces LIMIT 3")
        con.execute("CREATE VIEW errors AS SELECT trace_id FROM traces WHERE status = 'ERROR'")
        con.execute("INSERT INTO traces (trace_id, experiment_id, timestamp_ms, request_time, status) "
                    "VALUES ('stray', '0', 0, now()::TIMESTAMP, 'OK')")  # a row the extract never wrote
        errors = con.execute("SELECT count(*) FROM errors").fetchone()[0]
    before = table_dump(warehouse_path)
    inode = os.stat(warehouse_path).st_ino
    result = extract_traces(source, warehouse_path, full_refresh=True)
    assert result.mode == "full" and os.stat(warehouse_path).st_ino != inode  # a new file took the old one's place
    assert not Path(f"{warehouse_path}.rebuild").exists() and not Path(f"{warehouse_path}.wal").exists()
    assert_matches_mlflow(store, warehouse_path)  # the stray row is gone
    after = table_dump(warehouse_path)
    assert after["eval_runs"] == before["eval_runs"] and len(after["_extract_runs"]) == 2
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM my_notes").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == errors - 0  # the view works
    assert extract_traces(source, warehouse_path).mode == "unchanged"


def test_a_warehouse_file_that_cannot_be_opened_is_moved_aside_by_a_full_refresh(store: Store, warehouse_path: str):
    Path(warehouse_path).write_bytes(b"not a duckdb file" * 100)
    result = extract_traces(SqlTrackingStore(store.uri), warehouse_path, full_refresh=True)
    assert result.mode == "full"
    assert_matches_mlflow(store, warehouse_path)
    (aside,) = Path(warehouse_path).parent.glob("warehouse.duckdb.damaged-*")
    assert aside.read_bytes().startswith(b"not a duckdb file")


def test_another_tracking_store_is_refused_until_the_user_switches(store: Store, warehouse_path: str,
                                                                    empty_store_file: Path, tmp_path: Path):
    """MLFLOW_TRACKING_URI pointed at another (empty) store used to empty the warehouse, checks passing (0 = 0)."""
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    other = tmp_path / "other" / "mlflow.db"
    other.parent.mkdir()
    shutil.copyfile(empty_store_file, other)
    before = table_dump(warehouse_path)
    with pytest.raises(ExtractRefused) as refused:
        extract_traces(SqlTrackingStore(f"sqlite:///{other}"), warehouse_path)
    assert str(store.path) in str(refused.value) and str(other) in str(refused.value)
    assert "--switch-source" in str(refused.value)
    assert table_dump(warehouse_path) == before
    result = extract_traces(SqlTrackingStore(f"sqlite:///{other}"), warehouse_path, switch_source=True)
    assert (result.mode, result.source_traces, result.deleted_traces) == ("full", 0, len(store.trace_ids))
    with pytest.raises(ExtractRefused, match="copies the tracking store"):  # the switch is recorded
        extract_traces(SqlTrackingStore(store.uri), warehouse_path)


def test_an_extract_that_would_delete_most_of_the_warehouse_is_refused(store: Store, warehouse_path: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    gone = store.trace_ids[: len(store.trace_ids) * 2 // 3]
    mlflow.MlflowClient().delete_traces(store.experiment_id, trace_ids=gone)
    before = table_dump(warehouse_path)
    with pytest.raises(ExtractRefused, match=f"no longer has {len(gone)} of the warehouse's {len(store.trace_ids)}"):
        extract_traces(source, warehouse_path)
    assert table_dump(warehouse_path) == before
    result = extract_traces(source, warehouse_path, max_delete_share=0.9)  # a user who means it
    assert result.deleted_traces == len(gone)
    assert_matches_mlflow(store, warehouse_path)
