"""Traces as real agents write them: MLflow's OpenAI autologging against a loopback OpenAI-compatible server,
copied into the warehouse exactly and analysed like the demo's own traffic."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import mlflow
import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentError, AssessmentSource, AssessmentSourceType
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.breakdowns import AssessmentQuery, assessment_metrics, assessments_discovery
from assets.insights.queries import InsightsQuery, traffic_errors
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.conftest import Store
from tests.test_extract import assert_matches_mlflow

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


class FakeOpenAI(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions`: a canned answer with token usage; a prompt containing "fail" gets a 500."""

    def do_POST(self) -> None:  # noqa: N802 - the handler's name is http.server's
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if "fail" in prompt:
            answer, status = {"error": {"message": "upstream model overloaded", "type": "server_error"}}, 500
        else:
            answer, status = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"About {prompt}: see kb-101."},
                             "finish_reason": "stop"}],
                "usage": USAGE,
            }, 200
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args) -> None:  # quiet
        pass


@pytest.fixture
def fake_openai() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def autologged_store(empty_store: Path, fake_openai: str) -> Iterator[Store]:
    """A store written by `mlflow.openai.autolog()`: 5 answered chats in two user sessions, 1 failed call,
    human thumbs, a numeric judge with one errored run."""
    import openai

    uri = f"sqlite:///{empty_store}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("autologged", artifact_location=(empty_store.parent / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.openai.autolog()
    client = openai.OpenAI(base_url=fake_openai, api_key="test-key", max_retries=0)

    @mlflow.trace(name="support_chat")
    def chat(question: str, session: str, user: str) -> str:
        mlflow.update_current_trace(metadata={"mlflow.trace.session": session, "mlflow.trace.user": user})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content

    trace_ids = []
    try:
        for i, question in enumerate(["refresh a dashboard", "export to csv", "please fail now", "share a chart",
                                      "delete a row", "rename a column"]):
            try:
                chat(question, session=f"session-{i % 2}", user=f"user-{i % 3}")
            except openai.InternalServerError:
                pass  # the trace records the error
            trace_ids.append(mlflow.get_last_active_trace_id())
    finally:
        mlflow.openai.autolog(disable=True)
    human, judge = (AssessmentSource(AssessmentSourceType.HUMAN, "user-1"),
                    AssessmentSource(AssessmentSourceType.LLM_JUDGE, "relevance-judge"))
    for trace_id, thumbs in zip(trace_ids, [True, True, False, False, True, True]):
        mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=thumbs, source=human)
    for trace_id, score in zip(trace_ids[:5], [0.9, 0.8, 0.1, 0.4, 0.7]):
        mlflow.log_feedback(trace_id=trace_id, name="relevance", value=score, source=judge)
    mlflow.log_feedback(trace_id=trace_ids[5], name="relevance", source=judge,
                        error=AssessmentError(error_code="TIMEOUT", error_message="the judge timed out"))
    yield Store(uri, experiment_id, trace_ids, empty_store)


def test_autologged_traces_are_copied_exactly_with_tokens_models_sessions_and_errors(autologged_store: Store,
                                                                                      warehouse_path: str):
    store = autologged_store
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    assert_matches_mlflow(store, warehouse_path)  # tokens, users, sessions, spans, feedback: MLflow's own values
    with duckdb.connect(warehouse_path, read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM traces GROUP BY 1").fetchall())
        chats = con.execute("""SELECT count(*), count(DISTINCT model_name), any_value(model_name), sum(total_tokens)
                               FROM spans WHERE span_type = 'CHAT_MODEL' AND status = 'OK'""").fetchone()
        sessions = con.execute("SELECT count(DISTINCT session_id), count(DISTINCT user_id) FROM traces").fetchone()
        tokens = con.execute("SELECT sum(total_tokens) FROM traces").fetchone()[0]
    assert statuses == {"OK": 5, "ERROR": 1}
    assert chats[:3] == (5, 1, "gpt-4o-mini") and chats[3] == tokens == 5 * USAGE["total_tokens"]
    assert sessions == (2, 3)


def test_insights_on_autologged_traces_equal_mlflow(autologged_store: Store, warehouse_path: str, tmp_path: Path):
    store = autologged_store
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    mlflow_store = SqlAlchemyStore(store.uri, str(tmp_path / "artifacts"))
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    engine = sa.create_engine(f"duckdb:///{warehouse_path}", connect_args={"read_only": True})
    with engine.connect() as conn:
        errors = traffic_errors(conn, query)
        kinds = {a.name: a.assessment_type for a in assessments_discovery(conn, query).data}
        relevance = assessment_metrics(conn, AssessmentQuery(**query.model_dump(), assessment_name="relevance"))
    engine.dispose()
    by_status = {p.dimensions["trace_status"]: p.values["COUNT"] for p in mlflow_store.query_trace_metrics(
        [store.experiment_id], MetricViewType.TRACES, "trace_count", [MetricAggregation(AggregationType.COUNT)],
        dimensions=["trace_status"])}
    assert (errors.summary.error_count, errors.summary.total_count) == (by_status["ERROR"], sum(by_status.values()))
    assert kinds == {"user_thumbs": "boolean", "relevance": "numeric"}  # the errored judge run changes no type
    (point,) = mlflow_store.query_trace_metrics(
        [store.experiment_id], MetricViewType.ASSESSMENTS, "assessment_value", [MetricAggregation(AggregationType.AVG)],
        filters=["assessment.name = 'relevance'"])
    assert relevance.summary.avg == pytest.approx(point.values["AVG"]) and relevance.summary.count == 5
