"""The demo agent: its traffic mix, and its Databricks backend through the real databricks-sdk."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from resources.agent.backends import DatabricksBackend, OfflineBackend, backend_from_env
from resources.agent.demo_agent import DemoAgent, question_pool


def test_demo_traffic_has_5_to_10_percent_errors_and_every_span_type():
    agent, rng, pool = DemoAgent(OfflineBackend()), random.Random(7), question_pool()
    runs = [agent.run(*rng.choice(pool)[1:], rng) for _ in range(3000)]
    error_share = sum(r.failed for r in runs) / len(runs)
    assert 0.05 <= error_share <= 0.10, error_share
    span_types = {step.span_type for r in runs for step in r.steps}
    assert {"RETRIEVER", "CHAT_MODEL", "TOOL"} <= span_types
    failing_tools = {step.name for r in runs for step in r.steps if step.error}
    assert len(failing_tools) >= 3
    assert all(r.answer for r in runs if not r.failed)


def test_offline_backend_is_deterministic():
    messages = [{"role": "user", "content": "How do I refresh a dashboard?"}]
    assert OfflineBackend().chat(messages) == OfflineBackend().chat(messages)


class FakeServingEndpoint(BaseHTTPRequestHandler):
    """Speaks the one REST call the backend uses: POST /serving-endpoints/{name}/invocations."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeServingEndpoint.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        reply = {
            "object": "chat.completion",
            "model": "fm-test-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "From the endpoint."}}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def serving_endpoint():
    FakeServingEndpoint.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServingEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_databricks_backend_queries_the_endpoint_with_unified_auth(serving_endpoint, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", serving_endpoint)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    monkeypatch.setenv("LLMOPS_AGENT_BACKEND", "databricks")
    monkeypatch.setenv("LLMOPS_AGENT_ENDPOINT", "my-chat-endpoint")
    backend = backend_from_env()
    assert isinstance(backend, DatabricksBackend)
    run = DemoAgent(backend).run("How do I refresh a dashboard?", (), random.Random(1))
    assert run.answer == "From the endpoint."
    chats = [s for s in run.steps if s.span_type == "CHAT_MODEL"]
    assert chats[-1].attributes["mlflow.chat.tokenUsage"] == {"input_tokens": 21, "output_tokens": 4, "total_tokens": 25,
                                                                 "cache_read_input_tokens": 21}
    assert chats[-1].attributes["mlflow.llm.model"] == "fm-test-model"
    request = FakeServingEndpoint.requests[-1]
    assert request["path"] == "/serving-endpoints/my-chat-endpoint/invocations"
    assert request["auth"] == "Bearer dapi-test-token"
    assert request["body"]["messages"][-1]["role"] == "user"


def test_unknown_backend_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("LLMOPS_AGENT_BACKEND", "gpt-on-a-toaster")
    with pytest.raises(ValueError, match="LLMOPS_AGENT_BACKEND must be 'offline' or 'databricks'"):
        backend_from_env()
