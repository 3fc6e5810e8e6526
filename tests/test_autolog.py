"""Traces as real agents write them, against one loopback OpenAI-compatible server: MLflow's OpenAI autologging
(sessions, users, a failed call, a streamed answer), a LangGraph agent under `mlflow.langchain.autolog()` (tool
calls, a tool that raises), and `mlflow.genai.evaluate` with MLflow's built-in LLM judges and a code scorer that
fails on one row; human thumbs, a numeric judge with an errored run and feedback on a whole session. They are
copied into the warehouse exactly and every analytics answer equals MLflow's own."""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
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
from assets.insights.trace_metrics import WarehouseTraceStore
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.conftest import Store, send_json
from tests.test_extract import assert_matches_mlflow
from tests.test_insights_facts import insights_answers, refreshed
from tests.test_mlflow_api import _every_request, _same

USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
JUDGE_SAYS_NO = "outage"  # a judged row whose text mentions it is judged "no"


def _completion(model: str, message: dict) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": USAGE}


class FakeOpenAI(BaseHTTPRequestHandler):
    """`POST /v1/chat/completions` as OpenAI answers it: a judge's structured verdict, a tool call when tools
    are offered (and no tool answered yet), a streamed answer when asked; a prompt containing "fail" gets a 500."""

    def do_POST(self) -> None:  # noqa: N802 - the handler's name is http.server's
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last, model = body["messages"][-1], body["model"]
        text = str(last.get("content"))
        if "fail" in text:
            return send_json(self, 500, {"error": {"message": "upstream model overloaded", "type": "server_error"}})
        if body.get("response_format", {}).get("type") == "json_schema":  # an MLflow judge
            verdict = {"result": "no" if JUDGE_SAYS_NO in text else "yes", "rationale": "checked the answer"}
            return send_json(self, 200, _completion(model, {"role": "assistant", "content": json.dumps(verdict)}))
        if body.get("tools") and last["role"] != "tool":
            tool = "status_page" if JUDGE_SAYS_NO in text else "kb_search"
            call = {"id": "call-1", "type": "function", "function": {"name": tool, "arguments": json.dumps({"query": text})}}
            return send_json(self, 200, _completion(model, {"role": "assistant", "content": None, "tool_calls": [call]}))
        answer = f"About {text[:60]}: see kb-101."
        if body.get("stream"):
            return self._stream(model, answer)
        return send_json(self, 200, _completion(model, {"role": "assistant", "content": answer}))

    def _stream(self, model: str, answer: str) -> None:
        """Server-sent chunks, the usage in a last chunk with no choices (`stream_options.include_usage`)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model}
        for i, word in enumerate(answer.split(" ")):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            self.wfile.write(f"data: {json.dumps({**chunk, 'choices': [{'index': 0, 'delta': delta}]})}\n\n".encode())
        self.wfile.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': USAGE})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *_args) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class AutologgedStore(Store):
    eval_experiment_id: str = ""
    agent_trace_ids: list[str] | None = None


def _openai_chats(client) -> list[str]:
    """Six chats in two sessions of three users (one fails upstream) and a streamed one."""
    import openai

    @mlflow.trace(name="support_chat")
    def chat(question: str, session: str, user: str) -> str:
        mlflow.update_current_trace(metadata={"mlflow.trace.session": session, "mlflow.trace.user": user})
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content

    trace_ids = []
    for i, question in enumerate(["refresh a dashboard", "export to csv", "please fail now", "share a chart",
                                  "delete a row", "rename a column"]):
        try:
            chat(question, session=f"session-{i % 2}", user=f"user-{i % 3}")
        except openai.InternalServerError:
            pass  # the trace records the error
        trace_ids.append(mlflow.get_last_active_trace_id())
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "stream it"}],
                                            stream=True, stream_options={"include_usage": True})
    assert "kb-101" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    trace_ids.append(mlflow.get_last_active_trace_id())
    return trace_ids


def _langgraph_runs(base_url: str) -> list[str]:
    """A ReAct agent: two questions answered with the knowledge-base tool, one whose status-page tool raises."""
    import warnings

    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    @tool
    def kb_search(query: str) -> str:
        """Search the knowledge base."""
        return "kb-101: refresh from the menu"

    @tool
    def status_page(query: str) -> str:
        """Read the status page."""
        raise ConnectionError("status page unreachable")

    llm = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key="test-key", max_retries=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent moves to langchain.agents (not a dependency here)
        agent = create_react_agent(llm, [kb_search, status_page])
    trace_ids = []
    for question in ["how do I refresh", "where is the export button", f"is there an {JUDGE_SAYS_NO}"]:
        try:
            agent.invoke({"messages": [("user", question)]})
        except ConnectionError:
            pass  # the tool's error fails the run and its trace
        trace_ids.append(mlflow.get_last_active_trace_id())
    return trace_ids


def _evaluation(client) -> None:
    """mlflow.genai.evaluate over a predict function with two built-in LLM judges and a code scorer that fails
    on one row (its assessment has an error and no value)."""
    from mlflow.genai.scorers import RelevanceToQuery, Safety, scorer

    @scorer
    def cites_kb(inputs, outputs) -> bool:
        if "csv" in inputs["question"]:
            raise ValueError("the citation checker crashed")
        return "kb-" in outputs

    def predict(question: str) -> str:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content

    data = [{"inputs": {"question": q}} for q in ["refresh a dashboard", "export to csv", f"an {JUDGE_SAYS_NO} now"]]
    judge = "openai:/gpt-4o-mini"
    mlflow.genai.evaluate(data=data, predict_fn=predict,
                          scorers=[RelevanceToQuery(model=judge), Safety(model=judge), cites_kb])


@pytest.fixture(scope="module")
def autologged_store(empty_store_file, fake_openai: str, tmp_path_factory) -> Iterator[AutologgedStore]:
    import openai

    path = tmp_path_factory.mktemp("autologged") / "mlflow.db"
    shutil.copyfile(empty_store_file, path)
    uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("autologged", artifact_location=(path.parent / "art").as_uri())
    eval_experiment_id = mlflow.create_experiment("autologged-eval", artifact_location=(path.parent / "eval").as_uri())
    client = openai.OpenAI(base_url=fake_openai, api_key="test-key", max_retries=0)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "test-key")  # MLflow's judges call OpenAI through these
        env.setenv("OPENAI_API_BASE", fake_openai)
        mlflow.set_experiment(experiment_id=experiment_id)
        mlflow.openai.autolog()
        mlflow.langchain.autolog()
        try:
            trace_ids = _openai_chats(client)
            agent_trace_ids = _langgraph_runs(fake_openai)
            mlflow.set_experiment(experiment_id=eval_experiment_id)
            _evaluation(client)
        finally:
            mlflow.openai.autolog(disable=True)
            mlflow.langchain.autolog(disable=True)
    human, judge = (AssessmentSource(AssessmentSourceType.HUMAN, "user-1"),
                    AssessmentSource(AssessmentSourceType.LLM_JUDGE, "relevance-judge"))
    for trace_id, thumbs in zip(trace_ids, [True, True, False, False, True, True, True]):
        mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=thumbs, source=human)
    for trace_id, score in zip(trace_ids[:5], [0.9, 0.8, 0.1, 0.4, 0.7]):
        mlflow.log_feedback(trace_id=trace_id, name="relevance", value=score, source=judge)
    mlflow.log_feedback(trace_id=trace_ids[5], name="relevance", source=judge,
                        error=AssessmentError(error_code="TIMEOUT", error_message="the judge timed out"))
    # One verdict on a whole conversation: logged on one trace of session-1, it is about all three
    mlflow.log_feedback(trace_id=trace_ids[1], name="session_resolved", value=False, source=human,
                        metadata={"mlflow.trace.session": "session-1"})
    yield AutologgedStore(uri, experiment_id, trace_ids, path, eval_experiment_id, agent_trace_ids)


@pytest.fixture(scope="module")
def autologged_warehouse(autologged_store: AutologgedStore, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("autologged-wh") / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(autologged_store.uri), path)
    return path


@pytest.fixture(scope="module")
def mlflow_oracle(autologged_store: AutologgedStore, tmp_path_factory) -> SqlAlchemyStore:
    return SqlAlchemyStore(autologged_store.uri, str(tmp_path_factory.mktemp("artifacts")))


def test_autologged_traces_are_copied_exactly_with_tokens_models_sessions_and_errors(
        autologged_store: AutologgedStore, autologged_warehouse: str):
    store = autologged_store
    # tokens, users, sessions, spans, judges' and scorers' feedback: MLflow's own values
    assert_matches_mlflow(store, autologged_warehouse, [store.experiment_id, store.eval_experiment_id])
    with duckdb.connect(autologged_warehouse, read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM traces WHERE experiment_id = ? GROUP BY 1",
                                    [store.experiment_id]).fetchall())
        chats = con.execute("""SELECT count(*), count(DISTINCT model_name), any_value(model_name), sum(total_tokens)
                               FROM spans WHERE span_type = 'CHAT_MODEL' AND status = 'OK' AND trace_id IN ?""",
                            [store.trace_ids]).fetchone()
        sessions = con.execute("SELECT count(DISTINCT session_id), count(DISTINCT user_id) FROM traces").fetchone()
        tool_errors = con.execute("""SELECT name, exception_type FROM spans
                                     WHERE span_type = 'TOOL' AND status = 'ERROR'""").fetchall()
        judged = dict(con.execute("""SELECT name, list(DISTINCT string_value ORDER BY string_value) FROM assessments
                                     WHERE source_type = 'LLM_JUDGE' AND value_type = 'string' GROUP BY 1""").fetchall())
        crashed = con.execute("""SELECT value_type, aggregate_value, error_json LIKE '%citation checker crashed%'
                                 FROM assessments WHERE name = 'cites_kb' AND error_json IS NOT NULL""").fetchall()
    assert statuses == {"OK": 8, "ERROR": 2}  # the failed chat and the agent whose tool raised
    assert chats[:3] == (6, 1, "gpt-4o-mini") and chats[3] == 6 * USAGE["total_tokens"]  # the streamed one too
    assert sessions == (2, 3)
    assert tool_errors == [("status_page", "ConnectionError")]
    assert judged == {"relevance_to_query": ["no", "yes"], "safety": ["no", "yes"]}
    assert crashed == [(None, None, True)]  # the scorer's error is kept; it has no value, and no type


@pytest.mark.parametrize("request_", _every_request())
def test_every_mlflow_metric_on_autologged_traces_equals_mlflows(request_, autologged_store: AutologgedStore,
                                                                 autologged_warehouse: str,
                                                                 mlflow_oracle: SqlAlchemyStore):
    experiments = [autologged_store.experiment_id, autologged_store.eval_experiment_id]
    _same(WarehouseTraceStore(autologged_warehouse).query_trace_metrics(experiments, **request_),
          mlflow_oracle.query_trace_metrics(experiments, **request_))


def test_insights_on_autologged_traces_equal_mlflow(autologged_store: AutologgedStore, autologged_warehouse: str,
                                                   mlflow_oracle: SqlAlchemyStore):
    store = autologged_store
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    engine = sa.create_engine(f"duckdb:///{autologged_warehouse}", connect_args={"read_only": True})
    with engine.connect() as conn:
        errors = traffic_errors(conn, query)
        kinds = {a.name: a.assessment_type for a in assessments_discovery(conn, query).data}
        relevance = assessment_metrics(conn, AssessmentQuery(**query.model_dump(), assessment_name="relevance"))
    engine.dispose()
    by_status = {p.dimensions["trace_status"]: p.values["COUNT"] for p in mlflow_oracle.query_trace_metrics(
        [store.experiment_id], MetricViewType.TRACES, "trace_count", [MetricAggregation(AggregationType.COUNT)],
        dimensions=["trace_status"])}
    assert (errors.summary.error_count, errors.summary.total_count) == (by_status["ERROR"], sum(by_status.values()))
    assert kinds["user_thumbs"] == "boolean" and kinds["relevance"] == "numeric"  # the errored run changes no type
    (point,) = mlflow_oracle.query_trace_metrics(
        [store.experiment_id], MetricViewType.ASSESSMENTS, "assessment_value", [MetricAggregation(AggregationType.AVG)],
        filters=["assessment.name = 'relevance'"])
    assert relevance.summary.avg == pytest.approx(point.values["AVG"]) and relevance.summary.count == 5


CORRELATIONS = [
    pytest.param(("feedback.session_resolved = 'false'", "feedback.user_thumbs = 'false'"), id="session-feedback"),
    pytest.param(("span.name = 'status_page'", "attributes.status = 'ERROR'"), id="tool-error"),
    pytest.param(("feedback.relevance_to_query = 'no'", "feedback.safety = 'no'"), id="judges"),
    pytest.param(("feedback.relevance < 0.5", "feedback.user_thumbs = 'false'"), id="numeric-judge"),
]


@pytest.mark.parametrize("filters", CORRELATIONS)
def test_correlations_on_autologged_traces_equal_mlflows(filters, autologged_store: AutologgedStore,
                                                         autologged_warehouse: str, mlflow_oracle: SqlAlchemyStore):
    experiments = [autologged_store.experiment_id, autologged_store.eval_experiment_id]
    theirs = mlflow_oracle.calculate_trace_filter_correlation(experiments, *filters)
    ours = WarehouseTraceStore(autologged_warehouse).calculate_trace_filter_correlation(experiments, *filters)
    counts = ("filter1_count", "filter2_count", "joint_count", "total_count")
    assert [getattr(ours, c) for c in counts] == [getattr(theirs, c) for c in counts]
    assert theirs.joint_count > 0
    assert math.isclose(ours.npmi, theirs.npmi, rel_tol=1e-12)


def test_session_feedback_counts_for_every_trace_of_its_session(autologged_store: AutologgedStore,
                                                               autologged_warehouse: str):
    result = WarehouseTraceStore(autologged_warehouse).calculate_trace_filter_correlation(
        [autologged_store.experiment_id], "feedback.session_resolved = 'false'", "metadata.`mlflow.trace.session` = 'session-1'")
    assert (result.filter1_count, result.joint_count, result.filter2_count) == (3, 3, 3)


def test_insights_read_the_same_from_the_dimension_facts_on_autologged_traces(
        autologged_store: AutologgedStore, autologged_warehouse: str, tmp_path: Path):
    """Evaluation traces (mlflow.genai.evaluate), errored judges, session feedback, models and tool errors: the
    dimension facts change no answer."""
    path = str(tmp_path / "warehouse.duckdb")
    shutil.copyfile(autologged_warehouse, path)
    experiments = [autologged_store.experiment_id, autologged_store.eval_experiment_id]
    targets = [{"name": "status", "parameters": {"value": "ERROR"}},
               {"name": "assessment.user_thumbs", "parameters": {"value": False}},
               {"name": "assessment.session_resolved", "parameters": {"value": False}}]
    from_child_tables = insights_answers(path, experiments, targets)
    refreshed(path)
    assert insights_answers(path, experiments, targets) == from_child_tables
