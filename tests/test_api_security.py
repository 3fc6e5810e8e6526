"""`llmops serve` under attack, over real HTTP: bearer tokens, per-client feedback sources, hostile bodies, and the
refusal to listen publicly without a token."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter

import pytest
import sqlalchemy as sa
import uvicorn
from click.testing import CliRunner
from mlflow import MlflowClient

from orchestration.api import MAX_MESSAGE, PREFIX
from resources.settings import LLMOPS_API_TOKEN, LLMOPS_API_TOKENS
from orchestration.cli import main
from tests.conftest import Store, http, llmops_serve

SHARED, ALICE, BOB = "shared-tok-7Qv9yZ0c", "alice-tok-Xk2pL9mW", "bob-tok-R4nT8sQe"
SECRETS = (SHARED, ALICE, BOB)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secured(seeded_store: Store, warehouse: sa.Engine, tmp_path_factory):
    """`llmops serve` with a shared token and per-client tokens for alice and bob, over the session warehouse, logging
    feedback into a private copy of the seeded store; yields (url, store, server log)."""
    folder = tmp_path_factory.mktemp("secured")
    shutil.copyfile(seeded_store.path, folder / "mlflow.db")
    store = Store(f"sqlite:///{folder / 'mlflow.db'}", seeded_store.experiment_id, list(seeded_store.trace_ids))
    env = {"LLMOPS_HOME": str(folder / "home"), "LLMOPS_DUCKDB_PATH": warehouse.url.database,
           "MLFLOW_TRACKING_URI": store.uri, LLMOPS_API_TOKEN: SHARED, LLMOPS_API_TOKENS: f"alice={ALICE}, bob={BOB}"}
    log = folder / "server.log"
    with llmops_serve(env, log) as url:
        yield url, store, log


def spec_routes(url: str) -> list[tuple[str, str]]:
    spec = json.loads(http(f"{url}/openapi.json", headers=bearer(SHARED))[2])
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


def test_every_route_but_health_needs_a_valid_bearer_token(secured):
    url = secured[0]
    status, _, page = http(f"{url}/docs", headers=bearer(SHARED))
    assert status == 200
    assets = re.findall(r"""(?:src|href)=['"](/[^'"]+\.(?:js|css|png))['"]""", page.decode())
    routes = [*spec_routes(url), *[("GET", path) for path in ("/docs", "/redoc", "/openapi.json", "/no-such-page",
                                                                "/api/feedback", *assets)]]
    assert len(routes) > 15 and ("POST", "/api/feedback") in routes and assets
    refused = [{}, bearer("wrong-token"), bearer(f"{SHARED}x"), bearer(SHARED[:-1]), {"Authorization": SHARED},
               {"Authorization": f"Basic {SHARED}"}, {"Authorization": "Bearer "}]
    for method, path in routes:
        body = {} if method == "POST" else None
        for headers in refused:
            status, got, answer = http(url + path, body, headers)
            assert (status, json.loads(answer)["error_code"]) == (401, "UNAUTHENTICATED"), (path, headers, answer)
            assert got["www-authenticate"] == "Bearer" and not any(s.encode() in answer for s in SECRETS)
        for token in SECRETS:
            status, _, answer = http(url + path, body, bearer(token))
            assert status not in (401, 403) and status < 500, (path, answer)
            if status >= 400:  # a bad body, no such page or method: MLflow's error JSON too
                assert set(json.loads(answer)) == {"error_code", "message"}, (path, answer)
    assert http(f"{url}/health")[::2] == (200, b'{"status":"ok"}')


def test_per_client_tokens_name_the_feedback_source(secured):
    url, store, _ = secured
    trace = MlflowClient(store.uri).get_trace(store.trace_ids[3]).info
    body = {"experiment_id": store.experiment_id, "client_request_id": trace.client_request_id,
            "assessment_name": "app_source", "assessment_value": True}
    assert http(f"{url}/api/feedback", body, bearer(ALICE))[0] == 200
    status, _, answer = http(f"{url}/api/feedback", {**body, "source_id": "bob"}, bearer(ALICE))
    message = json.loads(answer)
    assert (status, message["error_code"]) == (403, "PERMISSION_DENIED"), message
    assert "'bob'" in message["message"] and "'alice'" in message["message"]
    assert not any(s.encode() in answer for s in SECRETS)
    assert http(f"{url}/api/feedback", {**body, "source_id": "alice"}, bearer(ALICE))[0] == 200
    assert http(f"{url}/api/feedback", {**body, "source_id": "user-77"}, bearer(SHARED))[0] == 200  # a trusted service
    assert http(f"{url}/api/feedback", body, bearer(SHARED))[0] == 200
    logged = MlflowClient(store.uri).get_trace(trace.trace_id).info.assessments
    sources = Counter(a.source.source_id for a in logged if a.name == "app_source")
    assert sources == {"alice": 2, "user-77": 1, "anonymous": 1}


def insights_routes(url: str) -> list[str]:
    return [path for method, path in spec_routes(url) if method == "POST" and path.startswith(PREFIX)]


def hostile(experiment_id: str) -> list[tuple[str, bytes, int, bool]]:
    """(name, body, expected status, whether only the dimension routes read the hostile part)."""
    def body(**change) -> bytes:
        return json.dumps({**valid_body(experiment_id), **change}).encode()

    def dimension(**parameters) -> bytes:
        hostile_one = {"name": "latency", "parameters": {"threshold": 1, **parameters}}
        return body(dimension1=hostile_one, dimension=hostile_one)

    return [
        ("truncated JSON", b'{"experiment_ids": ["1"', 400, False),
        ("not JSON", b"{not json", 400, False),
        ("not UTF-8", b"\xff\xfe\x00{", 400, False),
        ("trailing garbage", body() + b" trailing", 400, False),
        ("deeply nested", b"[" * 200_000, 400, False),
        ("a list as the body", b"[]", 400, False),
        ("null as the body", b"null", 400, False),
        ("NaN", body().replace(b'"start_time": 0', b'"start_time": NaN'), 400, False),
        ("Infinity", body().replace(b'"start_time": 0', b'"start_time": -Infinity'), 400, False),
        ("a float overflowing to infinity", body().replace(b'"start_time": 0', b'"start_time": 1e999'), 400, False),
        ("an integer beyond 2**53", body(start_time=10**30), 400, False),
        ("4301 digits", body().replace(b'"start_time": 0', b'"start_time": ' + b"9" * 4301), 400, False),
        ("a lone surrogate", body(experiment_ids=["\ud800"]), 400, False),
        ("a lone surrogate in a key", body(**{"\udfff": 1}), 400, False),
        ("experiment_ids as a string", body(experiment_ids=experiment_id), 400, False),
        ("a list in experiment_ids", body(experiment_ids=[[experiment_id]]), 400, False),
        ("an object in experiment_ids", body(experiment_ids=[{"id": experiment_id}]), 400, False),
        ("an unknown 900 kB experiment id", body(experiment_ids=["x" * 900_000]), 404, False),
        ("10,000 unknown experiment ids", body(experiment_ids=[f"no-{i}" for i in range(10_000)]), 404, False),
        ("a 2 MB body", body(experiment_ids=[experiment_id, "x" * 2_000_000]), 413, False),
        ("a list as a dimension value", body(dimension1={"name": "status", "parameters": {"value": ["OK"]}},
                                             dimension={"name": "status", "parameters": {"value": ["OK"]}}), 400, True),
        ("an object as a dimension value", body(dimension1={"name": "tags.persona", "parameters": {"value": {"a": 1}}},
                                                dimension={"name": "tags.persona", "parameters": {"value": {}}}), 400,
         True),
        ("null as a dimension value", body(dimension1={"name": "status", "parameters": {"value": None}},
                                           dimension={"name": "status", "parameters": {"value": None}}), 400, True),
        ("a list as an operator", dimension(operator=[">"]), 400, True),
        ("an object as an operator", dimension(operator={">": 1}), 400, True),
        ("NaN as a threshold", dimension().replace(b'"threshold": 1', b'"threshold": NaN'), 400, True),
        ("a huge integer as a value", body(dimension1={"name": "assessment.user_thumbs", "parameters": {"value": 10**40}},
                                           dimension={"name": "status", "parameters": {"value": 10**40}}), 400, True),
        ("a list as a dimension name", body(dimension1={"name": ["status"], "parameters": {"value": "OK"}},
                                            dimension={"name": ["status"], "parameters": {"value": "OK"}}), 400, True),
        ("a list as the parameters", body(dimension1={"name": "status", "parameters": ["OK"]},
                                          dimension={"name": "status", "parameters": ["OK"]}), 400, True),
    ]


def valid_body(experiment_id: str) -> dict:
    """One body every insights route accepts (each ignores the fields of the others)."""
    return {"experiment_ids": [experiment_id], "start_time": 0, "assessment_name": "user_thumbs",
            "tool_name": "web.fetch", "tag_key": "persona",
            "dimension1": {"name": "status", "parameters": {"value": "OK"}},
            "dimension2": {"name": "tags.persona", "parameters": {"value": "sme"}},
            "dimension": {"name": "status", "parameters": {"value": "ERROR"}}}


def test_hostile_bodies_get_mlflow_errors_from_every_insights_route(secured, seeded_store: Store):
    url, auth = secured[0], bearer(SHARED)
    routes = insights_routes(url)
    assert len(routes) == 13
    dimension_routes = {f"{PREFIX}/dimensions/calculate-npmi", f"{PREFIX}/correlations"}
    for route in routes:
        assert http(url + route, valid_body(seeded_store.experiment_id), auth)[0] == 200, route
    for name, body, expected, dimensions_only in hostile(seeded_store.experiment_id):
        for route in routes:
            status, _, answer = http(url + route, body, auth)
            assert status < 500, (name, route, answer[:300])
            if dimensions_only and route not in dimension_routes:
                continue
            error = json.loads(answer)
            assert (status, set(error)) == (expected, {"error_code", "message"}), (name, route, answer[:300])
            assert len(error["message"]) <= MAX_MESSAGE and len(answer) < 4 * MAX_MESSAGE, (name, route)
    status, _, answer = http(f"{url}{PREFIX}/traffic-cost/volume", b" " * 10_000_000, auth)
    assert (status, json.loads(answer)["error_code"]) == (413, "INVALID_PARAMETER_VALUE")


def test_errors_quote_a_bounded_part_of_the_input(secured):
    url = secured[0]
    status, _, answer = http(f"{url}{PREFIX}/traffic-cost/volume", {"experiment_ids": ["y" * 900_000]}, bearer(SHARED))
    message = json.loads(answer)["message"]
    assert status == 404 and message.startswith("Experiment(s) 'yyy") and "…" in message and len(message) < 200
    status, _, answer = http(f"{url}{PREFIX}/traffic-cost/volume", {"experiment_ids": ["1"], "start_time": float("nan")},
                             bearer(SHARED))
    assert (status, json.loads(answer)["message"]) == (
        400, "start_time: must be a finite number (NaN and Infinity are not JSON)")
    status, _, answer = http(f"{url}{PREFIX}/dimensions/calculate-npmi", {
        "experiment_ids": ["1"], "dimension1": {"name": "status", "parameters": {"value": ["OK"]}},
        "dimension2": {"name": "status", "parameters": {"value": "OK"}}}, bearer(SHARED))
    assert (status, json.loads(answer)["message"]) == (
        400, "dimension1.parameters.value: must be a string, a number or a boolean")


def test_no_token_reaches_the_server_log(secured):
    url, _, log = secured
    for headers in (bearer(SHARED), bearer(ALICE), bearer("wrong-secret-token"), {"Authorization": f"Basic {BOB}"}):
        http(f"{url}{PREFIX}/traffic-cost/volume", {"experiment_ids": ["1"]}, headers)
        http(f"{url}/api/feedback", {"experiment_id": "1"}, headers)
    text = log.read_text()
    assert '"POST /api/feedback HTTP/1.1" 401' in text  # the right file, with the access log in it
    assert not any(secret in text for secret in (*SECRETS, "wrong-secret-token"))


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """Run `llmops serve ARGS` in this process with uvicorn.run recorded instead of called (nothing listens);
    returns (exit code, output, the hosts uvicorn would have served on). The environment is put back after."""
    saved = dict(os.environ)
    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: served.append(host))
    for name in (LLMOPS_API_TOKEN, LLMOPS_API_TOKENS):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, **env: str) -> tuple[int, str, list[str]]:
        served.clear()
        result = CliRunner().invoke(main, ["serve", *args], env={"LLMOPS_HOME": str(tmp_path), **env})
        return result.exit_code, result.output, list(served)

    yield run
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", "127.0.0.1.example.com"])
def test_serve_refuses_a_public_interface_without_a_token(serve, host):
    for env in ({}, {LLMOPS_API_TOKEN: ""}):
        code, output, served = serve("--host", host, **env)
        assert code == 1 and "LLMOPS_API_TOKEN" in output and host in output and not served, output


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost"])
def test_serve_listens_on_loopback_without_a_token(serve, host):
    assert serve("--host", host)[::2] == (0, [host])


def test_serve_listens_publicly_with_a_token(serve):
    assert serve("--host", "0.0.0.0", **{LLMOPS_API_TOKEN: SHARED})[::2] == (0, ["0.0.0.0"])
    assert serve("--host", "0.0.0.0", **{LLMOPS_API_TOKENS: f"alice={ALICE}"})[::2] == (0, ["0.0.0.0"])


@pytest.mark.parametrize("env, fragment", [
    ({LLMOPS_API_TOKENS: "alice=tok-one-1,tok-two-2"}, "entry 2 is not name=token"),
    ({LLMOPS_API_TOKENS: "alice=tok-one-1,alice=tok-two-2"}, "client 'alice' is listed twice"),
    ({LLMOPS_API_TOKENS: "alice=tok-one-1,bob=tok-one-1"}, "every API token must be different"),
    ({LLMOPS_API_TOKEN: "tok-one-1", LLMOPS_API_TOKENS: "alice=tok-one-1"}, "every API token must be different"),
    ({LLMOPS_API_TOKEN: "tok one-1"}, "printable ASCII without spaces"),
])
def test_bad_token_settings_are_refused_without_showing_a_token(serve, env, fragment):
    code, output, served = serve(**env)
    assert code == 1 and fragment in output and not served, output
    assert "tok-one" not in output and "tok-two" not in output and "one-1" not in output
