"""The feedback loop on a real MLflow store, a real warehouse and a real Dagster instance: negative feedback
becomes review-queue items exactly once, through the sensor (build_sensor_context) and the labeling job; on a
`databricks` tracking URI, items of Databricks labeling sessions (the real mlflow.genai.labeling and
databricks-agents against a loopback Review App)."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pytest
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.genai import review_queues
from mlflow.tracking._model_registry import utils as registry_utils

from assets.labeling.rules import RulesFileError, load_rules
from assets.labeling.sessions import CONTROL_TAG, feedback_after
from assets.traces.extract import extract_traces
from orchestration.definitions import build_definitions
from orchestration.sensors import build_sensors
from resources.agent.backends import OfflineBackend
from resources.agent.demo_agent import DemoAgent, record_trace
from resources.mlflow import MlflowResource
from resources.trace_sources import SqlTrackingStore
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource
from tests.conftest import PROJECT_DIR
from tests.fake_databricks import FakeReviewAppWorkspace
from tests.oracle import downgrade

defs = build_definitions()
negative_feedback_sensor = {s.name: s for s in build_sensors(True)}["negative_feedback_sensor"]


@pytest.fixture
def loop(empty_store: Path, tmp_path: Path, monkeypatch):
    """20 agent traces without feedback in a fresh store, a warehouse path, rules without controls, resources;
    feedback is routable as soon as an extract has read it (no settling time)."""
    monkeypatch.setenv("LLMOPS_FEEDBACK_SETTLE_S", "0")
    store = empty_store
    uri = f"sqlite:///{store}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment("support").experiment_id
    agent, now_ns = DemoAgent(OfflineBackend()), 1_790_000_000_000_000_000
    traces = [record_trace(agent.run(f"How do I refresh dashboard {i}?", (), random.Random(i)), start_ns=now_ns + i * 10**9,
                           tags={}, client_request_id=f"req-{i}") for i in range(20)]
    rules = tmp_path / "rules.yaml"
    rules.write_text((PROJECT_DIR / "labeling" / "rules.yaml").read_text().replace("controls_share: 0.2",
                                                                                  "controls_share: 0.0"))
    resources = {
        "mlflow": MlflowResource(tracking_uri=uri),
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
        "user_files": UserFilesResource(prompts_dir=str(tmp_path), evals_dir=str(tmp_path), labeling_rules=str(rules)),
    }
    return {"uri": uri, "store": store, "experiment_id": experiment_id, "traces": traces, "rules": rules,
            "resources": resources}


def thumbs(loop: dict, trace_ids: list[str], value: bool, source: str = "HUMAN") -> None:
    mlflow.set_tracking_uri(loop["uri"])
    for trace_id in trace_ids:
        mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=value,
                            source=AssessmentSource(getattr(AssessmentSourceType, source), "someone"))


def extract(loop: dict) -> None:
    extract_traces(SqlTrackingStore(loop["uri"]), loop["resources"]["warehouse"].path)


def tick(loop: dict, instance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "warehouse": loop["resources"]["warehouse"], "user_files": loop["resources"]["user_files"]})
    return negative_feedback_sensor.evaluate_tick(context)


def run(loop: dict, instance, request: dg.RunRequest, resources: dict | None = None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("labeling").execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources or loop["resources"],
        raise_on_error=False)


def queue_items(loop: dict) -> dict[str, list[str]]:
    mlflow.set_tracking_uri(loop["uri"])
    queues = review_queues.list_review_queues(experiment_id=loop["experiment_id"])
    return {q.name: sorted(i.item_id for i in review_queues.list_review_queue_items(q.queue_id)) for q in queues}


def today() -> str:
    return f"thumbs_down {datetime.now(timezone.utc):%Y-%m-%d}"


def test_n_negative_feedback_become_exactly_n_items_once(loop: dict):
    negatives, positives, judged = loop["traces"][:5], loop["traces"][5:8], loop["traces"][8:10]
    thumbs(loop, negatives, False)
    thumbs(loop, positives, True)
    thumbs(loop, judged, False, source="LLM_JUDGE")  # the rule reviews HUMAN feedback only
    extract(loop)
    with dg.instance_for_test() as instance:
        first = tick(loop, instance, None)
        (request,) = first.run_requests
        assert len(request.run_config["ops"]["labeling_sessions"]["config"]["assessment_ids"]) == 5
        assert run(loop, instance, request).success
        assert queue_items(loop) == {today(): sorted(negatives)}
        # the same tick evaluated again asks for the same run key (Dagster starts it once) ...
        assert [r.run_key for r in tick(loop, instance, None).run_requests] == [request.run_key]
        # ... and even a second run of the batch adds nothing
        again = run(loop, instance, request)
        assert again.asset_materializations_for_node("labeling_sessions")[0].metadata["traces_added"].value == 0
        assert queue_items(loop) == {today(): sorted(negatives)}
        # nothing new since the cursor: nothing requested
        assert not tick(loop, instance, first.cursor).run_requests
        progress = again.asset_materializations_for_node("labeling_progress")[0].metadata
        assert (progress["sessions"].value, progress["pending"].value) == (1, 5)

    mlflow.set_tracking_uri(loop["uri"])
    (queue,) = review_queues.list_review_queues(experiment_id=loop["experiment_id"])
    assert queue.users == ["support-lead@example.com"] and len(queue.schema_ids) == 2
    with duckdb.connect(loop["resources"]["warehouse"].path, read_only=True) as con:
        assert con.sql("SELECT session, items, pending, completed FROM labeling_progress").fetchall() == [
            (today(), 5, 5, 0)]


def test_a_failed_run_retried_neither_loses_nor_duplicates(loop: dict, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    thumbs(loop, loop["traces"][:6], False)
    extract(loop)
    down = {**loop["resources"], "mlflow": MlflowResource(tracking_uri="http://127.0.0.1:9")}
    with dg.instance_for_test() as instance:
        first = tick(loop, instance, None)
        (request,) = first.run_requests
        failed = run(loop, instance, request, resources=down)  # the tracking server is down: the run fails
        assert not failed.success
        # feedback arriving meanwhile is picked up by the next tick, whatever happened to the run
        thumbs(loop, loop["traces"][6:8], False)
        extract(loop)
        (later,) = tick(loop, instance, first.cursor).run_requests
        assert len(later.run_config["ops"]["labeling_sessions"]["config"]["assessment_ids"]) == 2
        # a retry that half-succeeded before: two of the batch's traces are already in the session
        mlflow.set_tracking_uri(loop["uri"])
        queue = review_queues.create_review_queue(today(), queue_type="custom", users=["support-lead@example.com"],
                                                  experiment_id=loop["experiment_id"])
        review_queues.add_items_to_review_queue(queue.queue_id, item_ids=loop["traces"][:2])
        assert run(loop, instance, request).success and run(loop, instance, later).success
        assert run(loop, instance, request).success  # retried once more: still nothing twice
    assert queue_items(loop) == {today(): sorted(loop["traces"][:8])}


def test_equal_last_updated_times_are_neither_skipped_nor_repeated(loop: dict):
    thumbs(loop, loop["traces"][:7], False)
    with sqlite3.connect(loop["store"]) as db:  # MLflow writes in sequence; make the times collide on purpose
        db.execute("UPDATE assessments SET last_updated_timestamp = 1790000000000")
    extract(loop)
    with duckdb.connect(loop["resources"]["warehouse"].path, read_only=True) as con:
        seen, cursor = [], (-1, "")
        while page := feedback_after(con, cursor, limit=3):  # page boundaries fall inside the equal times
            seen += [row.assessment_id for row in page]
            cursor = (page[-1].last_updated_ms, page[-1].assessment_id)
        every = [r[0] for r in con.execute("SELECT assessment_id FROM assessments ORDER BY 1").fetchall()]
    assert seen == every and len(seen) == 7
    with dg.instance_for_test() as instance:
        (request,) = tick(loop, instance, None).run_requests
        assert run(loop, instance, request).success
    assert queue_items(loop) == {today(): sorted(loop["traces"][:7])}


def batch_ids(result) -> list[str]:
    return [i for r in result.run_requests for i in r.run_config["ops"]["labeling_sessions"]["config"]["assessment_ids"]]


def read_ms(loop: dict) -> int:
    with duckdb.connect(loop["resources"]["warehouse"].path, read_only=True) as con:
        return con.execute("SELECT max(source_read_ms) FROM _extract_runs").fetchone()[0]


def later_extract(loop: dict, seconds: int) -> None:
    """As if the last extract had read the source `seconds` later (nothing new in it)."""
    with duckdb.connect(loop["resources"]["warehouse"].path) as con:
        con.execute("UPDATE _extract_runs SET source_read_ms = source_read_ms + ?", [seconds * 1000])


def test_feedback_logged_just_before_an_extract_is_routed_after_it(loop: dict, monkeypatch):
    monkeypatch.setenv("LLMOPS_FEEDBACK_SETTLE_S", "60")  # the default
    thumbs(loop, loop["traces"][:1], False)
    time.sleep(1)
    extract(loop)
    with dg.instance_for_test() as instance:
        (request,) = tick(loop, instance, None).run_requests  # within the settling time, yet copied: routed now
        assert run(loop, instance, request).success
    assert queue_items(loop) == {today(): loop["traces"][:1]}


def test_feedback_committed_after_an_extract_read_the_source_is_routed_after_the_next(loop: dict, monkeypatch):
    monkeypatch.setenv("LLMOPS_FEEDBACK_SETTLE_S", "60")
    thumbs(loop, loop["traces"][:1], False)
    extract(loop)
    with dg.instance_for_test() as instance:
        first = tick(loop, instance, None)
        assert len(batch_ids(first)) == 1
        # last updated before the extract read the source (and before the feedback routed), committed after it
        thumbs(loop, loop["traces"][1:2], False)
        with sqlite3.connect(loop["store"]) as db:
            db.execute("UPDATE assessments SET last_updated_timestamp = (SELECT min(last_updated_timestamp) - 1 FROM "
                       "assessments) WHERE trace_id = ?", [loop["traces"][1]])
            (late, late_ms), = db.execute("SELECT assessment_id, last_updated_timestamp FROM assessments "
                                          "WHERE trace_id = ?", [loop["traces"][1]]).fetchall()
        assert late_ms < read_ms(loop)
        assert not tick(loop, instance, first.cursor).run_requests  # not copied yet
        extract(loop)
        later = tick(loop, instance, first.cursor)
        assert batch_ids(later) == [late]
        assert all(run(loop, instance, r).success for r in first.run_requests + later.run_requests)
    assert queue_items(loop) == {today(): sorted(loop["traces"][:2])}


def test_no_feedback_is_routed_twice_across_ticks_and_extracts(loop: dict, monkeypatch):
    monkeypatch.setenv("LLMOPS_FEEDBACK_SETTLE_S", "60")
    thumbs(loop, loop["traces"][:3], False)
    extract(loop)
    with dg.instance_for_test() as instance:
        first = tick(loop, instance, None)
        assert [r.run_key for r in tick(loop, instance, None).run_requests] == [r.run_key for r in first.run_requests]
        thumbs(loop, loop["traces"][3:5], False)
        extract(loop)
        second = tick(loop, instance, first.cursor)
        assert not tick(loop, instance, second.cursor).run_requests
        extract(loop)  # nothing new in the source
        third = tick(loop, instance, second.cursor)
        later_extract(loop, 120)  # the settling time has passed over all of it
        fourth = tick(loop, instance, third.cursor)
        ticks = (first, second, third, fourth)
        assert [len(batch_ids(t)) for t in ticks] == [3, 2, 0, 0]
        assert all(run(loop, instance, r).success for t in ticks for r in t.run_requests)
    cursor = json.loads(fourth.cursor)
    assert cursor["routed"] == {}  # forgotten once the cursor passed them
    with duckdb.connect(loop["resources"]["warehouse"].path, read_only=True) as con:
        assert con.execute("SELECT max(last_updated_ms) FROM assessments").fetchone()[0] == cursor["last_updated_ms"]
    assert queue_items(loop) == {today(): sorted(loop["traces"][:5])}


def test_controls_and_rolling_sessions(loop: dict):
    loop["rules"].write_text(loop["rules"].read_text().replace("controls_share: 0.0", "controls_share: 0.5")
                             .replace("max_items_per_session: 50", "max_items_per_session: 5"))
    negatives, positives = loop["traces"][:4], loop["traces"][4:12]
    thumbs(loop, negatives, False)
    thumbs(loop, positives, True)
    extract(loop)
    with dg.instance_for_test() as instance:
        (request,) = tick(loop, instance, None).run_requests
        result = run(loop, instance, request)
        assert result.success
        meta = result.asset_materializations_for_node("labeling_sessions")[0].metadata
        assert (meta["traces_added"].value, meta["controls_added"].value) == (4, 4)  # half of each session
        assert run(loop, instance, request).success  # a retry draws the same controls: nothing added
    items = queue_items(loop)
    assert sorted(map(len, items.values())) == [3, 5] and set(items) == {today(), f"{today()} #2"}
    everything = [t for queue in items.values() for t in queue]
    assert len(everything) == len(set(everything)) == 8 and set(negatives) <= set(everything)
    controls = set(everything) - set(negatives)
    assert controls <= set(positives)
    client = mlflow.MlflowClient(loop["uri"])
    assert all(client.get_trace(t).info.tags.get(CONTROL_TAG) == "thumbs_down" for t in controls)


@pytest.mark.parametrize("edit, reason", [
    (("equals: false", "equals: false\n    below: 0.5"), "give exactly one of `equals`"),
    (("[answer_correct, expected_answer]", "[answer_correct, mood]"), "label schemas ['mood']"),
    (("controls_share: 0.0", "controls_share: 1.5"), "rules.0.controls_share: Input should be less than 1"),
    (("kind: categorical, options: [correct, partially correct, wrong]", "kind: categorical"), "needs options"),
])
def test_bad_rules_name_the_problem(loop: dict, edit, reason):
    loop["rules"].write_text(loop["rules"].read_text().replace(*edit))
    with pytest.raises(RulesFileError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        load_rules(loop["rules"])


def test_a_warehouse_from_before_migration_4_waits_for_its_next_extract(loop: dict):
    thumbs(loop, loop["traces"][:1], False)
    extract(loop)
    downgrade(loop["resources"]["warehouse"].path, 3)  # as an older platform left it
    with dg.instance_for_test() as instance:
        skipped = tick(loop, instance, None)
        assert not skipped.run_requests and "run warehouse_refresh" in skipped.skip_message
        extract(loop)  # migrates, and records its read
        assert len(tick(loop, instance, None).run_requests) == 1


def test_sensor_state_is_a_json_cursor(loop: dict):
    thumbs(loop, loop["traces"][:1], False)
    extract(loop)
    with dg.instance_for_test() as instance:
        result = tick(loop, instance, None)
    cursor = json.loads(result.cursor)
    assert set(cursor) == {"last_updated_ms", "assessment_id", "routed"} and cursor["assessment_id"].startswith("a-")


def test_a_run_launched_without_a_batch_routes_every_feedback_once(loop: dict):
    thumbs(loop, loop["traces"][:3], False)
    thumbs(loop, loop["traces"][3:5], True)
    extract(loop)
    with dg.instance_for_test() as instance:
        (request,) = tick(loop, instance, None).run_requests
        assert run(loop, instance, request).success  # the sensor's batch: 3 traces
        thumbs(loop, loop["traces"][5:7], False)
        extract(loop)
        backfill = run(loop, instance, dg.RunRequest(run_config={}))  # as from the UI's launchpad
        assert backfill.success
        meta = backfill.asset_materializations_for_node("labeling_sessions")[0].metadata
        assert (meta["feedback_in_batch"].value, meta["traces_added"].value) == (7, 2)
    assert queue_items(loop) == {today(): sorted(loop["traces"][:3] + loop["traces"][5:7])}


TOKEN = "dapi-review-secret-0123"


def test_databricks_labeling_sessions_get_each_trace_once_across_a_failed_run(loop: dict, monkeypatch):
    registry_before = (registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI"))
    with FakeReviewAppWorkspace({loop["experiment_id"]: "/Users/lead/support"}, fail_adds=1) as workspace:
        monkeypatch.setenv("DATABRICKS_HOST", workspace.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        databricks = {**loop["resources"], "mlflow": MlflowResource(tracking_uri="databricks")}
        loop["rules"].write_text(loop["rules"].read_text().replace("controls_share: 0.0", "controls_share: 0.5"))
        negatives, positives = loop["traces"][:5], loop["traces"][5:8]
        thumbs(loop, negatives, False)
        thumbs(loop, positives, True)
        extract(loop)
        with dg.instance_for_test() as instance:
            (request,) = tick(loop, instance, None).run_requests
            failed = run(loop, instance, request, resources=databricks)  # the Review App refuses the items once
            assert not failed.success
            assert "temporarily unavailable" in failed.failure_data_for_node("labeling_sessions").error.message
            assert workspace.session_traces() == {today(): []}  # the session was created, nothing added
            retried = run(loop, instance, request, resources=databricks)
            assert retried.success
            assert run(loop, instance, request, resources=databricks).success  # once more: nothing twice
            events = [str(e) for r in (failed, retried) for e in r.all_events]
            progress = retried.asset_materializations_for_node("labeling_progress")[0].metadata
        # every negative and, as controls, the 3 positives (5 wanted); linked to the session's run, tagged
        assert workspace.session_traces() == {today(): sorted(negatives + positives)}
        (app,) = workspace.apps.values()
        assert app["experiment_id"] == loop["experiment_id"]
        assert {s["name"] for s in app["labeling_schemas"]} >= {"answer_correct", "expected_answer"}
        (session,) = workspace.sessions.values()
        assert session["assigned_users"] == ["support-lead@example.com"]
        assert [s["name"] for s in session["labeling_schemas"]] == ["answer_correct", "expected_answer"]
        assert workspace.linked == {session["mlflow_run_id"]: set(negatives + positives)}
        assert {t: tags[CONTROL_TAG] for t, tags in workspace.trace_tags.items()} == dict.fromkeys(positives, "thumbs_down")
        assert (progress["sessions"].value, progress["pending"].value) == (1, 8)
        assert {r["auth"] for r in workspace.requests} == {f"Bearer {TOKEN}"}
        # databricks-agents moved the process's model registry to Unity Catalog; labeling put it back
        assert (registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI")) == registry_before
        assert not any(TOKEN in e for e in events)
