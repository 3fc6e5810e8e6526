"""Feedback linked by client_request_id, over real HTTP (`llmops serve`) into a real MLflow store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import mlflow
import pytest
from mlflow import MlflowClient

from assets.labeling.feedback import IDEMPOTENCY_KEY
from assets.traces.extract import extract_traces
from resources.agent.backends import OfflineBackend
from resources.agent.demo_agent import DemoAgent, record_trace
from resources.trace_sources import SqlTrackingStore
from tests.conftest import Store, llmops_serve, post_status


@pytest.fixture(scope="module")
def feedback_api(seeded_store: Store, tmp_path_factory) -> tuple[str, Store, str]:
    """A private copy of the seeded store, extracted, then one more trace the warehouse has not seen."""
    import shutil

    folder = tmp_path_factory.mktemp("feedback")
    shutil.copyfile(seeded_store.path, folder / "mlflow.db")
    store = Store(f"sqlite:///{folder / 'mlflow.db'}", seeded_store.experiment_id, list(seeded_store.trace_ids))
    extract_traces(SqlTrackingStore(store.uri), str(folder / "warehouse.duckdb"))
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_experiment(experiment_id=store.experiment_id)
    run = DemoAgent(OfflineBackend()).run("How do I refresh a dashboard?")
    late = record_trace(run, start_ns=1_700_000_000_000_000_000, tags={}, client_request_id="req-after-the-extract")
    env = {"LLMOPS_HOME": str(folder / "home"), "LLMOPS_DUCKDB_PATH": str(folder / "warehouse.duckdb"),
           "MLFLOW_TRACKING_URI": store.uri}
    with llmops_serve(env) as url:
        yield url, store, late


def post(url: str, body) -> tuple[int, dict]:
    return post_status(f"{url}/api/feedback", body)


def feedback_on(store: Store, trace_id: str, name: str) -> list:
    return [a for a in MlflowClient(store.uri).get_trace(trace_id).info.assessments if a.name == name]


def test_feedback_lands_on_the_trace_with_that_client_request_id(feedback_api):
    url, store, _ = feedback_api
    trace = MlflowClient(store.uri).get_trace(store.trace_ids[5]).info
    status, body = post(url, {"experiment_id": store.experiment_id, "client_request_id": trace.client_request_id,
                              "assessment_name": "app_thumbs", "assessment_value": False,
                              "rationale": "Wrong numbers", "source_id": "user-77"})
    assert status == 200 and (body["trace_id"], body["resolved_by"], body["duplicate"]) == (
        trace.trace_id, "warehouse", False)
    (logged,) = feedback_on(store, trace.trace_id, "app_thumbs")
    assert (logged.value, logged.rationale, logged.source.source_type, logged.source.source_id) == (
        False, "Wrong numbers", "HUMAN", "user-77")
    assert logged.assessment_id == body["assessment_id"]


def test_a_trace_the_warehouse_has_not_seen_is_found_through_mlflow(feedback_api):
    url, store, late = feedback_api
    status, body = post(url, {"experiment_name": "llmops-demo", "client_request_id": "req-after-the-extract",
                              "assessment_name": "app_stars", "assessment_value": 4})
    assert status == 200 and (body["trace_id"], body["resolved_by"]) == (late, "mlflow")
    assert [a.value for a in feedback_on(store, late, "app_stars")] == [4]


def test_a_retried_request_with_an_idempotency_key_logs_once(feedback_api):
    url, store, _ = feedback_api
    trace = MlflowClient(store.uri).get_trace(store.trace_ids[7]).info
    request = {"experiment_id": store.experiment_id, "client_request_id": trace.client_request_id,
               "assessment_name": "app_retry", "assessment_value": "too long", "idempotency_key": "click-123"}
    first, second = post(url, request), post(url, request)
    assert first[0] == second[0] == 200 and second[1]["duplicate"] and not first[1]["duplicate"]
    assert first[1]["assessment_id"] == second[1]["assessment_id"]
    (logged,) = feedback_on(store, trace.trace_id, "app_retry")
    assert logged.metadata[IDEMPOTENCY_KEY] == "click-123"
    third = post(url, {**request, "idempotency_key": "click-124"})  # another click is another feedback
    assert not third[1]["duplicate"] and len(feedback_on(store, trace.trace_id, "app_retry")) == 2


@pytest.mark.parametrize("body, fragment", [
    ({"experiment_id": "{exp}", "client_request_id": "req-nobody", "assessment_name": "x", "assessment_value": True},
     "No trace with client_request_id 'req-nobody'"),
    ({"experiment_id": "{exp}", "client_request_id": "x' OR '1'='1", "assessment_name": "x", "assessment_value": True},
     "No trace with client_request_id \"x' OR '1'='1\""),
    ({"experiment_id": "4242", "client_request_id": "req-1", "assessment_name": "x", "assessment_value": True},
     "No experiment with id '4242'"),
    ({"experiment_name": "no such experiment", "client_request_id": "req-1", "assessment_name": "x",
      "assessment_value": True}, "No experiment named 'no such experiment'"),
])
def test_unknown_ids_give_404(feedback_api, body, fragment):
    url, store, _ = feedback_api
    body = {k: (store.experiment_id if v == "{exp}" else v) for k, v in body.items()}
    status, answer = post(url, body)
    assert (status, answer["error_code"]) == (404, "RESOURCE_NOT_FOUND") and fragment in answer["message"], answer


@pytest.mark.parametrize("body, fragment", [
    ({"client_request_id": "r", "assessment_name": "x", "assessment_value": True},
     "give exactly one of experiment_id and experiment_name"),
    ({"experiment_id": "1", "experiment_name": "e", "client_request_id": "r", "assessment_name": "x",
      "assessment_value": True}, "give exactly one of"),
    ({"experiment_id": "1", "assessment_name": "x", "assessment_value": True}, "client_request_id: Field required"),
    ({"experiment_id": "1", "client_request_id": "r" * 51, "assessment_name": "x", "assessment_value": True},
     "client_request_id: String should have at most 50 characters"),
    ({"experiment_id": "1", "client_request_id": "r", "assessment_name": "x", "assessment_value": [1, 2]},
     "assessment_value"),
    ({"experiment_id": "1", "client_request_id": "r", "assessment_name": "x", "assessment_value": 1, "mood": "x"},
     "mood: Extra inputs are not permitted"),
    (b"{not json", "JSON"),
])
def test_bad_bodies_give_400_naming_the_field(feedback_api, body, fragment):
    status, answer = post(feedback_api[0], body)
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE") and fragment in answer["message"], answer


def test_feedback_api_is_on_the_openapi_page(feedback_api):
    with urllib.request.urlopen(f"{feedback_api[0]}/openapi.json", timeout=10) as response:
        assert "/api/feedback" in json.load(response)["paths"]

