"""The warehouse equals what MLflow returns, stays exact across incremental runs, and survives a kill."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import mlflow
import pytest
from mlflow.entities import AssessmentSource, AssessmentSourceType, Span
from mlflow.entities.trace_state import TraceState
from mlflow.tracing.client import TracingClient
from mlflow.tracking._tracking_service.utils import _get_store

from assets.traces.extract import extract_traces
from resources.agent.traffic import seed_demo
from resources.trace_sources import FIRST_SUPPORTED_REVISION, SourceError, SqlTrackingStore, mlflow_revisions, source_for
from tests.conftest import HOSTILE_TAGS, Store
from tests.oracle import downgrade, mlflow_rows, table_dump, warehouse_rows

PROJECT_DIR = Path(__file__).resolve().parent.parent


def assert_matches_mlflow(store: Store, warehouse_path: str, experiment_ids: list[str] | None = None) -> None:
    """The warehouse holds exactly MLflow's rows of the store's experiment (or of `experiment_ids`)."""
    expected = mlflow_rows(store.uri, experiment_ids or [store.experiment_id])
    actual = warehouse_rows(warehouse_path)
    for table in expected:
        assert actual[table] == expected[table], (
            f"{table}: missing {sorted(expected[table] - actual[table])[:3]}, extra {sorted(actual[table] - expected[table])[:3]}"
        )
    assert_child_rows_carry_their_trace(warehouse_path)


def assert_child_rows_carry_their_trace(warehouse_path: str) -> None:
    """Spans, tags, metadata and assessments hold their trace's time and key (and tags and metadata its
    experiment), row for row; every trace has its own key and says whether an evaluation made it."""
    experiment = " OR c.experiment_id IS DISTINCT FROM t.experiment_id"
    with duckdb.connect(warehouse_path, read_only=True) as con:
        for table, extra in (("spans", ""), ("trace_tags", experiment), ("trace_metadata", experiment),
                             ("assessments", "")):
            total, wrong = con.execute(
                f"SELECT count(*), count(*) FILTER (c.trace_timestamp_ms IS DISTINCT FROM t.timestamp_ms "
                f"OR c.trace_key IS DISTINCT FROM t.trace_key{extra}) FROM {table} c JOIN traces t USING (trace_id)"
            ).fetchone()
            assert total > 0 and wrong == 0, (table, total, wrong)
        traces, keys, evaluations = con.execute(
            "SELECT count(*), count(DISTINCT trace_key), count(evaluation) FROM traces").fetchone()
        assert traces == keys == evaluations
        assert con.execute("""
            SELECT count(*) FROM traces WHERE evaluation
            <> (trace_id IN (SELECT trace_id FROM trace_metadata WHERE key = 'mlflow.sourceRun'))""").fetchone()[0] == 0


def test_migration_2_backfills_trace_time_on_an_existing_warehouse(seeded_store: Store, warehouse_path: str):
    extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path)
    downgrade(warehouse_path, 1)  # a version-1 warehouse, as written before migration 2
    result = extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path)
    assert result.mode == "incremental"  # migration 7 has every trace copied again, to fill its new columns
    assert_matches_mlflow(seeded_store, warehouse_path)
    assert_child_rows_carry_their_trace(warehouse_path)


def test_migration_10_backfills_the_trace_of_metadata_rows(seeded_store: Store, warehouse_path: str):
    extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path)
    downgrade(warehouse_path, 9)  # as written before metadata rows carried their trace's experiment and time
    assert extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path).mode == "unchanged"
    assert_child_rows_carry_their_trace(warehouse_path)


def test_migration_11_numbers_the_traces_in_time_order_and_new_ones_after_them(store: Store, warehouse_path: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    downgrade(warehouse_path, 10)  # as written before traces had keys
    assert extract_traces(source, warehouse_path).mode == "unchanged"  # the migration numbered them, nothing copied
    assert_child_rows_carry_their_trace(warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        ordered = con.execute("SELECT trace_key FROM traces ORDER BY timestamp_ms, trace_id").fetchall()
        assert [key for (key,) in ordered] == list(range(1, len(ordered) + 1))
        last = con.execute("SELECT trace_id FROM traces ORDER BY trace_key DESC LIMIT 1").fetchone()[0]
    # the trace holding the highest key is deleted, another one changes: no key is given twice
    TracingClient(store.uri).delete_traces(experiment_id=store.experiment_id, trace_ids=[last])
    mlflow.set_trace_tag(store.trace_ids[0], "late", "tag")
    assert extract_traces(source, warehouse_path).changed_traces == 1
    assert_matches_mlflow(store, warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT trace_key FROM traces WHERE trace_id = ?", [store.trace_ids[0]]).fetchone()[0] \
            == len(ordered) + 1


def test_a_trace_written_while_the_extract_reads_is_copied_once_by_the_next_run(store: Store, warehouse_path: str):
    """A trace the source gets after the run fingerprinted it is not copied by that run (it has no fingerprint
    yet): the next run copies it, once."""
    def meanwhile(message: str) -> None:
        if message.startswith("fingerprinted"):
            seed_demo(1, experiment="llmops-demo", seed=5)

    first = extract_traces(SqlTrackingStore(store.uri), warehouse_path, progress=meanwhile)
    assert first.rows["traces"] == len(store.trace_ids)
    assert extract_traces(SqlTrackingStore(store.uri), warehouse_path).changed_traces == 1
    assert_matches_mlflow(store, warehouse_path)


def test_full_extract_equals_mlflow(seeded_store: Store, warehouse_path: str):
    result = extract_traces(SqlTrackingStore(seeded_store.uri), warehouse_path)
    assert result.mode == "full"
    assert result.source_traces == len(seeded_store.trace_ids) == result.changed_traces
    assert_matches_mlflow(seeded_store, warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        tags = dict(con.execute("SELECT key, value FROM trace_tags WHERE trace_id = ?", [seeded_store.trace_ids[0]]).fetchall())
        assert {k: tags[k] for k in HOSTILE_TAGS} == HOSTILE_TAGS
        types = dict(con.execute("SELECT value_type, count(*) FROM assessments GROUP BY 1").fetchall())
        assert set(types) == {"boolean", "numeric", "string", "json"}
        # request_time is the UTC wall time of timestamp_ms
        assert con.execute(
            "SELECT count(*) FROM traces WHERE epoch_ms(request_time) <> timestamp_ms"
        ).fetchone()[0] == 0
        span_types = {r[0] for r in con.execute("SELECT DISTINCT span_type FROM spans").fetchall()}
        assert {"AGENT", "CHAT_MODEL", "TOOL", "RETRIEVER"} <= span_types
        assert con.execute("SELECT count(*) FROM traces WHERE client_request_id IS NULL").fetchone()[0] == 0


def test_rerun_with_nothing_new_changes_nothing(seeded_store: Store, warehouse_path: str):
    source = SqlTrackingStore(seeded_store.uri)
    extract_traces(source, warehouse_path)
    before = table_dump(warehouse_path)
    result = extract_traces(source, warehouse_path)
    assert (result.mode, result.changed_traces, result.deleted_traces) == ("unchanged", 0, 0)
    after = table_dump(warehouse_path)
    runs = after.pop("_extract_runs")  # the run itself is recorded, with when it read the source
    assert sorted(r[2] for r in runs) == ["full", "unchanged"] and all(r[-1] for r in runs)
    assert after == {t: rows for t, rows in before.items() if t != "_extract_runs"}


def make_late_changes(store: Store) -> None:
    """Feedback, tags, an assessment override, a deleted trace and new traces, all after a first extract."""
    old, other, gone = store.trace_ids[5], store.trace_ids[6], store.trace_ids[7]
    mlflow.log_feedback(trace_id=old, name="user_thumbs", value=False, rationale="late and negative",
                        source=AssessmentSource(AssessmentSourceType.HUMAN, "late-user"))
    mlflow.set_trace_tag(other, "reviewed", "yes")
    mlflow.set_trace_tag(other, "persona", "changed-persona")
    mlflow.delete_trace_tag(old, "channel")
    judge = next(a for a in mlflow.get_trace(other).info.assessments if a.name == "relevance")
    mlflow.override_feedback(trace_id=other, assessment_id=judge.assessment_id, value=0.1, rationale="human fix")
    mlflow.MlflowClient().delete_traces(store.experiment_id, trace_ids=[gone])
    seed_demo(5, experiment="llmops-demo", seed=99)


def test_late_changes_appear_on_next_run(store: Store, warehouse_path: str, tmp_path: Path):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    make_late_changes(store)
    result = extract_traces(source, warehouse_path)
    assert result.mode == "incremental"
    assert result.deleted_traces == 1
    assert result.changed_traces == 2 + 5  # two old traces changed, five new ones
    assert_matches_mlflow(store, warehouse_path)
    fresh = str(tmp_path / "fresh.duckdb")
    extract_traces(source, fresh)
    assert warehouse_rows(warehouse_path) == warehouse_rows(fresh)


KILL_SCRIPT = """
import sys, time
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore

uri, warehouse, kill_at, marker, full_refresh = sys.argv[1:6]

def progress(message):
    if message.startswith(kill_at):
        open(marker, "w").close()
        time.sleep(600)

extract_traces(SqlTrackingStore(uri), warehouse, full_refresh=full_refresh == "full", progress=progress)
"""


def kill_extract_at(store: Store, warehouse_path: str, kill_at: str, marker: Path, full_refresh: bool = False) -> None:
    """Run an extract in its own process and SIGKILL it when its progress line starts with `kill_at`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, store.uri, warehouse_path, kill_at, str(marker),
         "full" if full_refresh else "incremental"],
        cwd=PROJECT_DIR, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the extract ended before it reached the kill point"
            assert time.monotonic() < deadline, "the extract never reached the kill point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kill_at", ["fingerprinted", "traces:", "assessments:"])
def test_killed_run_leaves_warehouse_consistent(store: Store, warehouse_path: str, tmp_path: Path, kill_at: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    make_late_changes(store)
    before = table_dump(warehouse_path)
    kill_extract_at(store, warehouse_path, kill_at, tmp_path / "reached")
    assert table_dump(warehouse_path) == before  # nothing of the killed run is visible
    extract_traces(source, warehouse_path)
    assert_matches_mlflow(store, warehouse_path)


def test_kill_between_commit_and_close_leaves_a_warehouse_that_keeps_working(store: Store, warehouse_path: str,
                                                                              tmp_path: Path):
    """The run is killed after its COMMIT, before the checkpoint on close: the next opener replays the WAL. With
    the secondary index of schema version 4 that wedged the warehouse (tests/test_warehouse.py); now every
    later run works, incremental runs that replace the replayed rows and full refreshes alike."""
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    make_late_changes(store)
    kill_extract_at(store, warehouse_path, "committed", tmp_path / "reached")
    assert Path(f"{warehouse_path}.wal").exists()  # the committed run's rows are only in the WAL
    assert extract_traces(source, warehouse_path).mode == "unchanged"  # replays the WAL, checkpoints on close
    for trace_id in store.trace_ids[5:7] + [t.info.trace_id for t in mlflow.search_traces(
            locations=[store.experiment_id], max_results=5, return_type="list", include_spans=False)]:
        mlflow.set_trace_tag(trace_id, "after_the_kill", "yes")  # the next run deletes the replayed rows
    result = extract_traces(source, warehouse_path)
    assert (result.mode, result.rebuilt) == ("incremental", None)  # not repaired: never damaged
    assert result.changed_traces >= 5
    assert_matches_mlflow(store, warehouse_path)
    assert extract_traces(source, warehouse_path, full_refresh=True).mode == "full"
    assert_matches_mlflow(store, warehouse_path)


def test_killed_full_refresh_leaves_the_warehouse_as_it_was(store: Store, warehouse_path: str, tmp_path: Path):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    make_late_changes(store)
    before = table_dump(warehouse_path)
    kill_extract_at(store, warehouse_path, "traces:", tmp_path / "reached", full_refresh=True)
    assert Path(f"{warehouse_path}.rebuild").exists()  # the half-built file, never swapped in
    assert table_dump(warehouse_path) == before
    assert extract_traces(source, warehouse_path, full_refresh=True).mode == "full"
    assert not Path(f"{warehouse_path}.rebuild").exists()
    assert_matches_mlflow(store, warehouse_path)


def _late_span(trace_id: str) -> None:
    """A span logged into a trace that was already copied (MLflow bumps the trace's db_payload_generation)."""
    trace = mlflow.get_trace(trace_id)
    span = trace.data.spans[-1].to_dict() | {"span_id": base64.b64encode(os.urandom(8)).decode(), "name": "late"}
    TracingClient().log_spans(trace.info.experiment_id, [Span.from_dict(span)])


def _rewritten_info(trace_id: str, change) -> None:
    """MLflow's store rewrites a trace info it is given again (as an exporter does when the trace ends)."""
    info = TracingClient().get_trace_info(trace_id)
    change(info)
    _get_store().start_trace(info)


LATE_CHANGES = {
    "span": _late_span,
    "metadata": lambda t: _rewritten_info(t, lambda info: info.trace_metadata.update({"late.key": "late value"})),
    "status": lambda t: _rewritten_info(t, lambda info: setattr(info, "state", TraceState.ERROR)),
    "tag": lambda t: mlflow.set_trace_tag(t, "late", "yes"),
    "assessment": lambda t: mlflow.log_feedback(trace_id=t, name="late_score", value=0.25),
}


@pytest.mark.parametrize("kind", LATE_CHANGES)
def test_a_late_change_is_copied_by_the_next_incremental_run(store: Store, warehouse_path: str, kind: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    trace_id = next(t for t in store.trace_ids if TracingClient().get_trace_info(t).state == TraceState.OK)
    LATE_CHANGES[kind](trace_id)
    result = extract_traces(source, warehouse_path)
    assert (result.mode, result.changed_traces, result.deleted_traces) == ("incremental", 1, 0)
    assert_matches_mlflow(store, warehouse_path)


def test_unparsable_span_content_is_reported_not_fatal(store: Store, warehouse_path: str):
    victim = store.trace_ids[3]
    with sqlite3.connect(store.path) as db:
        span_id = db.execute("SELECT span_id FROM spans WHERE trace_id = ? AND type = 'TOOL' LIMIT 1", [victim]).fetchone()
        span_id = span_id[0] if span_id else db.execute("SELECT span_id FROM spans WHERE trace_id = ? LIMIT 1", [victim]).fetchone()[0]
        db.execute("UPDATE spans SET content = '{\"truncated\": ' WHERE trace_id = ? AND span_id = ?", [victim, span_id])
        spans_of_victim = db.execute("SELECT count(*) FROM spans WHERE trace_id = ?", [victim]).fetchone()[0]
    result = extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    assert result.bad_span_count == 1
    assert result.bad_spans == [(victim, span_id, "span content is not valid JSON")]
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans WHERE trace_id = ?", [victim]).fetchone()[0] == spans_of_victim
        assert con.execute("SELECT count(*) FROM traces WHERE trace_id = ?", [victim]).fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM assessments").fetchone()[0] > 0


def test_missing_store_is_a_clear_error(tmp_path: Path, warehouse_path: str):
    uri = f"sqlite:///{tmp_path}/nope.db"
    with pytest.raises(SourceError, match="does not exist"):
        extract_traces(source_for(uri), warehouse_path)


def test_pre_317_store_is_refused_with_the_supported_range(store: Store, warehouse_path: str):
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'b7e2c1a4d9f3'")  # the revision before 3.17's layout
    with pytest.raises(SourceError, match=r"older than MLflow 3\.17.*LLMOPS_TRACE_SOURCE=api"):
        extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    assert not Path(warehouse_path).exists()


def test_a_store_at_the_first_317_revision_is_read(store: Store, warehouse_path: str):
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", [FIRST_SUPPORTED_REVISION])
    assert extract_traces(SqlTrackingStore(store.uri), warehouse_path).mode == "full"


def test_revisions_are_read_as_alembic_reads_them():
    """The migration scripts' revision graph, parsed without running them, is alembic's own."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config("sqlite://"))
    assert mlflow_revisions() == {
        r.revision: (r.down_revision,) if isinstance(r.down_revision, str) else tuple(r.down_revision or ())
        for r in script.walk_revisions()}


def test_unknown_source_kind_names_the_choices():
    with pytest.raises(SourceError, match="auto, sql or api"):
        source_for("sqlite:///x.db", "parquet")


CONCURRENT_SCRIPT = """
import json, sys
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore

print(json.dumps(extract_traces(SqlTrackingStore(sys.argv[1]), sys.argv[2]).mode))
"""


def test_concurrent_extracts_never_collide(seeded_store: Store, warehouse_path: str):
    """Two writers at once: one waits for the other's lock, exactly one copies, the warehouse stays exact."""
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, seeded_store.uri, warehouse_path], cwd=PROJECT_DIR,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)}, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    modes = sorted(proc.communicate(timeout=300)[0].strip().splitlines()[-1] for proc in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert modes == ['"full"', '"unchanged"']
    assert_matches_mlflow(seeded_store, warehouse_path)


def test_user_cache_tokens_and_every_experiment_are_copied(store: Store, warehouse_path: str):
    trace_id = store.trace_ids[0]
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cache_read_input_tokens": 7,
             "cache_creation_input_tokens": 3}
    _rewritten_info(trace_id, lambda info: info.trace_metadata.update(
        {"mlflow.trace.user": "user-42", "mlflow.trace.tokenUsage": json.dumps(usage)}))
    client = mlflow.MlflowClient()
    empty = client.create_experiment("no traces yet")
    gone = client.create_experiment("deleted one")
    client.delete_experiment(gone)
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    assert_matches_mlflow(store, warehouse_path)
    with duckdb.connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT user_id, cache_read_input_tokens, cache_creation_input_tokens FROM traces "
                           "WHERE trace_id = ?", [trace_id]).fetchone() == ("user-42", 7, 3)
        experiments = dict(con.execute("SELECT experiment_id, lifecycle_stage FROM experiments").fetchall())
    assert (experiments[empty], experiments[gone]) == ("active", "deleted")
