"""Feedback linked by client_request_id, over real HTTP (`llmops serve`) into a real MLflow store."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError

from assets.labeling.feedback import IDEMPOTENCY_KEY, FeedbackRequest
from assets.traces.extract import extract_traces
from resources.agent.backends import OfflineBackend
from resources.agent.demo_agent import DemoAgent, record_trace
from resources.trace_sources import SqlTrackingStore
from tests.conftest import Store, free_port, http, llmops_serve, mlflow_server, post_status


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


@pytest.mark.parametrize(("value", "expected", "given"), [("false", "boolean", "string"), (1, "boolean", "numeric"),
                                                       (True, "numeric", "boolean"), ("0.9", "numeric", "string")])
def test_a_value_of_another_type_than_the_feedback_name_has_is_refused(feedback_api, value, expected, given):
    """user_thumbs is boolean and relevance numeric in the warehouse: one string would make either a string feedback."""
    url, store, _ = feedback_api
    trace = MlflowClient(store.uri).get_trace(store.trace_ids[9]).info
    name = "user_thumbs" if expected == "boolean" else "relevance"
    before = len(feedback_on(store, trace.trace_id, name))
    status, answer = post(url, {"experiment_id": store.experiment_id, "client_request_id": trace.client_request_id,
                                "assessment_name": name, "assessment_value": value})
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert answer["message"].startswith(f"assessment_value: feedback '{name}' in experiment {store.experiment_id} "
                                        f"is {expected}; send a {expected} value, not a {given} one.")
    assert len(feedback_on(store, trace.trace_id, name)) == before  # nothing was logged


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


VALID = {"experiment_id": "1", "client_request_id": "r", "assessment_name": "x", "assessment_value": True}


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
    ({**VALID, "assessment_value": float("nan")}, "assessment_value: must be a finite number"),
    (json.dumps(VALID).replace("true", "Infinity").encode(), "assessment_value: must be a finite number"),
    (json.dumps(VALID).replace("true", "-Infinity").encode(), "assessment_value: must be a finite number"),
    (json.dumps(VALID).replace("true", "1e999").encode(), "assessment_value: must be a finite number"),
    ({**VALID, "assessment_value": 2**53 + 1}, "assessment_value: integers must be within ±2**53"),
    ({**VALID, "assessment_value": "x" * 10_001}, "String should have at most 10000 characters"),
    ({**VALID, "rationale": "x" * 10_001}, "rationale: String should have at most 10000 characters"),
    ({**VALID, "rationale": "half an emoji \ud83d"}, "rationale: must be Unicode text"),
    ({**VALID, "source_id": "user\n77"}, "source_id: String should match pattern"),
    ({**VALID, "source_id": ""}, "source_id: String should have at least 1 character"),
    ({**VALID, "experiment_id": "1 OR 1=1"}, "experiment_id: String should match pattern"),
    ({**VALID, "experiment_id": "9" * 101}, "experiment_id: String should have at most 100 characters"),
    ({**VALID, "idempotency_key": "k" * 201}, "idempotency_key: String should have at most 200 characters"),
])
def test_bad_bodies_give_400_naming_the_field(feedback_api, body, fragment):
    status, answer = post(feedback_api[0], body)
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE") and fragment in answer["message"], answer


def test_feedback_api_is_on_the_openapi_page(feedback_api):
    with urllib.request.urlopen(f"{feedback_api[0]}/openapi.json", timeout=10) as response:
        assert "/api/feedback" in json.load(response)["paths"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2**53 + 1, -(2**60), "x" * 10_001])
def test_the_python_api_refuses_values_mlflow_cannot_keep_exactly(value):
    with pytest.raises(ValidationError, match="assessment_value"):
        FeedbackRequest(**{**VALID, "assessment_value": value})


def feedback_body(store: Store, index: int, name: str, **extra) -> tuple[str, dict]:
    """(trace id, feedback request) for the store's trace number `index`."""
    trace = MlflowClient(store.uri).get_trace(store.trace_ids[index]).info
    return trace.trace_id, {"experiment_id": store.experiment_id, "client_request_id": trace.client_request_id,
                            "assessment_name": name, "assessment_value": False, **extra}


def no_warehouse_env(folder: Path, tracking_uri: str) -> dict[str, str]:
    """`llmops serve` settings before the first extract: trace ids come from MLflow's search_traces."""
    return {"LLMOPS_HOME": str(folder / "home"), "LLMOPS_DUCKDB_PATH": str(folder / "warehouse.duckdb"),
            "MLFLOW_TRACKING_URI": tracking_uri}


def assert_unavailable(status: int, headers: dict[str, str], answer: bytes) -> str:
    error = json.loads(answer)
    assert (status, error["error_code"], headers.get("retry-after")) == (503, "TEMPORARILY_UNAVAILABLE", "10"), answer
    return error["message"]


def test_while_mlflow_is_stopped_feedback_gets_503_and_the_retry_logs_it_once(store: Store, tmp_path: Path):
    port = free_port()
    trace_id, body = feedback_body(store, 4, "app_down", idempotency_key="click-down")
    with llmops_serve(no_warehouse_env(tmp_path, f"http://admin:s3cret@127.0.0.1:{port}")) as url:
        with mlflow_server(store, port, tmp_path):  # MLflow's own answers over REST are final
            status, _, answer = http(f"{url}/api/feedback", {**body, "experiment_id": "4242"})
            assert (status, json.loads(answer)["error_code"]) == (404, "RESOURCE_NOT_FOUND"), answer
            status, _, answer = http(f"{url}/api/feedback", {**body, "experiment_id": "abc"})
            assert (status, json.loads(answer)["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), answer
        by_name = {**{k: v for k, v in body.items() if k != "experiment_id"}, "experiment_name": "llmops-demo"}
        for request in (body, by_name):
            started = time.monotonic()
            message = assert_unavailable(*http(f"{url}/api/feedback", request))
            assert time.monotonic() - started < 10  # at once, not after minutes of MLflow's retries
            assert "http://admin:***@127.0.0.1" in message and "s3cret" not in message, message
        assert feedback_on(store, trace_id, "app_down") == []
        with mlflow_server(store, port, tmp_path):
            assert [post(url, body)[0] for _ in range(2)] == [200, 200]  # the client's retry, and a second one
    assert len(feedback_on(store, trace_id, "app_down")) == 1


@contextmanager
def failing_proxy(target: str) -> Iterator[tuple[str, list[tuple[str, str]], list[str]]]:
    """An HTTP proxy to `target` answering 502 with an HTML page, like a load balancer, to requests matching one of
    the (method, path regex) pairs in the list it yields; also yields every 'METHOD path' it failed."""
    failing: list[tuple[str, str]] = []
    failed: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if any(self.command == method and re.search(path, self.path) for method, path in failing):
                failed.append(f"{self.command} {self.path}")
                status, answer, kind = 502, b"<html><body>502 Bad Gateway</body></html>", "text/html"
            else:
                request = urllib.request.Request(target + self.path, data=body or None, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, answer = error.code, error.read()
                kind = "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PATCH = do_DELETE = forward

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", failing, failed
    finally:
        server.shutdown()
        server.server_close()


def test_mlflow_failing_in_search_check_or_log_gives_503_and_logs_nothing(store: Store, tmp_path: Path):
    trace_id, body = feedback_body(store, 6, "app_flaky", idempotency_key="click-flaky")
    with (mlflow_server(store, free_port(), tmp_path) as target, failing_proxy(target) as (proxy, failing, failed),
          llmops_serve(no_warehouse_env(tmp_path, proxy)) as url):
        for step in [("POST", r"/traces/search"), ("GET", r"/traces/tr-[0-9a-f]+(\?|$)"),
                     ("POST", r"/traces/tr-[0-9a-f]+/assessments")]:
            failing[:], failed[:] = [step], []
            message = assert_unavailable(*http(f"{url}/api/feedback", body))
            assert failed and "502" in message, (step, message)
            assert feedback_on(store, trace_id, "app_flaky") == []
        failing.clear()
        assert post(url, body)[0] == 200
    assert len(feedback_on(store, trace_id, "app_flaky")) == 1


def test_a_tracking_server_that_never_answers_gives_503_after_the_timeout(tmp_path: Path):
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen()  # the kernel accepts connections; nothing ever answers
        env = {**no_warehouse_env(tmp_path, f"http://127.0.0.1:{hole.getsockname()[1]}"),
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
        with llmops_serve(env) as url:
            started = time.monotonic()
            message = assert_unavailable(*http(f"{url}/api/feedback", VALID))
            assert "timeout" in message and time.monotonic() - started < 10, message


def test_two_server_processes_log_each_idempotency_key_once(store: Store, tmp_path: Path):
    env = no_warehouse_env(tmp_path, store.uri)
    requests = [feedback_body(store, 10 + i % 6, "app_race", idempotency_key=f"race-{i}") for i in range(24)]

    def send(url: str, body: dict, both_ready: threading.Barrier) -> tuple[int, dict]:
        both_ready.wait()  # the two servers get the key at the same instant
        for _ in range(50):  # a client retries a 503
            status, answer = post(url, body)
            if status != 503:
                return status, answer
            time.sleep(0.2)
        return status, answer

    with llmops_serve(env) as first, llmops_serve(env) as second, ThreadPoolExecutor(2) as pool:
        pairs = []
        for _, body in requests:  # one key at a time, to both servers at once: their check-then-log overlap
            pairs.append(list(pool.map(send, (first, second), [body] * 2, [threading.Barrier(2)] * 2)))
    for (_, body), pair in zip(requests, pairs, strict=True):
        assert [status for status, _ in pair] == [200, 200], pair
        assert sorted(answer["duplicate"] for _, answer in pair) == [False, True], (body["idempotency_key"], pair)
        assert pair[0][1]["assessment_id"] == pair[1][1]["assessment_id"]
    keys = Counter(a.metadata[IDEMPOTENCY_KEY] for trace_id in {t for t, _ in requests}
                   for a in feedback_on(store, trace_id, "app_race"))
    assert keys == {body["idempotency_key"]: 1 for _, body in requests}
