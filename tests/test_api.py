"""The insights REST API over real HTTP: `llmops serve` in its own process on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from assets.insights.queries import InsightsQuery, TimeBucket, traffic_latency, traffic_volume
from tests.conftest import HOSTILE_TAGS, Store, llmops_serve, post_status

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFIX = "/api/3.0/mlflow/traces/insights"


@pytest.fixture(scope="module")
def api(warehouse: sa.Engine, tmp_path_factory) -> str:
    with llmops_serve({"LLMOPS_HOME": str(tmp_path_factory.mktemp("home")),
                       "LLMOPS_DUCKDB_PATH": warehouse.url.database}) as url:
        yield url


def post(url: str, path: str, body) -> tuple[int, dict]:
    return post_status(f"{url}{PREFIX}/{path}", body, timeout_s=30)


def test_volume_and_latency_over_http_equal_the_python_api(api, warehouse, seeded_store: Store):
    body = {"experiment_ids": [seeded_store.experiment_id], "time_bucket": "hour"}
    query = InsightsQuery(**body)
    with warehouse.connect() as conn:
        volume, latency = traffic_volume(conn, query), traffic_latency(conn, query)
    assert post(api, "traffic-cost/volume", body) == (200, volume.model_dump())
    status, payload = post(api, "traffic-cost/latency", body)
    assert status == 200 and payload == json.loads(latency.model_dump_json())
    assert set(payload["summary"]) == {"p50_latency", "p90_latency", "p95_latency", "p99_latency", "avg_latency"}
    assert all(point["time_bucket"] % TimeBucket.hour.milliseconds == 0 for point in payload["time_series"])


ENDPOINTS = {
    "traffic-cost/volume": ({}, ["summary", "time_series"]),
    "traffic-cost/errors": ({}, ["summary", "time_series"]),
    "traffic-cost/tokens": ({}, ["summary", "time_series"]),
    "assessments/discovery": ({}, ["data"]),
    "assessments/metrics": ({"assessment_name": "user_thumbs"}, ["assessment_type", "summary", "time_series"]),
    "tools/discovery": ({}, ["data"]),
    "tools/metrics": ({"tool_name": "web.fetch"}, ["summary", "time_series"]),
    "tags/discovery": ({}, ["data"]),
    "tags/metrics": ({"tag_key": "persona", "limit": 2}, ["summary", "time_series"]),
    "dimensions/discovery": ({}, ["data"]),
    "correlations": ({"dimension": {"name": "assessment.user_thumbs", "parameters": {"value": "false"}}, "limit": 5},
                     ["dimension", "total_count", "data"]),
}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_endpoint_answers(api, seeded_store: Store, path):
    extra, fields = ENDPOINTS[path]
    status, payload = post(api, path, {"experiment_ids": [seeded_store.experiment_id], **extra})
    assert status == 200, payload
    assert all(payload[field] not in (None, [], {}) for field in fields), payload


def test_calculate_npmi_binds_hostile_values_and_returns_null_for_nan(api, seeded_store: Store):
    for key, value in HOSTILE_TAGS.items():
        status, payload = post(api, "dimensions/calculate-npmi", {
            "experiment_ids": [seeded_store.experiment_id],
            "dimension1": {"name": f"tags.{key}", "parameters": {"value": value}},
            "dimension2": {"name": "status", "parameters": {"value": "OK"}},
        })
        assert status == 200 and payload["dimension1"] == {"name": f"tags.{key}", "value": value, "count": 1}, payload
    status, payload = post(api, "dimensions/calculate-npmi", {
        "experiment_ids": [seeded_store.experiment_id],
        "dimension1": {"name": "tags.persona", "parameters": {"value": "nobody"}},
        "dimension2": {"name": "latency", "parameters": {"threshold": "1000", "operator": ">="}},
    })
    assert status == 200 and payload["correlation"]["npmi_score"] is None and payload["dimension1"]["count"] == 0
    assert payload["dimension2"]["value"] == ">= 1000" and payload["total_count"] == len(seeded_store.trace_ids)


BAD_REQUESTS = [
    ("traffic-cost/volume", {"time_bucket": "fortnight"}, r"time_bucket: Input should be 'hour', 'day' or 'week'"),
    ("traffic-cost/volume", {"experiment_ids": []}, r"experiment_ids: List should have at least 1 item"),
    ("traffic-cost/latency", {"start_time": 10, "end_time": 5}, r"start_time \(10\) is after end_time \(5\)"),
    ("tags/metrics", {"tag_key": "persona", "limit": 0}, r"limit: Input should be greater than or equal to 1"),
    ("tools/metrics", {}, r"tool_name: Field required"),
    ("dimensions/calculate-npmi", {"dimension1": {"name": "mood", "parameters": {"value": "x"}},
                                   "dimension2": {"name": "status", "parameters": {"value": "OK"}}},
     r"unknown dimension 'mood'"),
    ("dimensions/calculate-npmi", {"dimension1": {"name": "latency", "parameters": {"threshold": "slow"}},
                                   "dimension2": {"name": "status", "parameters": {"value": "OK"}}},
     r"dimension 'latency': threshold must be a number, not 'slow'"),
    ("correlations", {"dimension": {"name": "tools.web.fetch", "parameters": {"value": "sometimes"}}},
     r"used, error or success"),
]


@pytest.mark.parametrize("path, change, message", BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_requests_get_400_naming_the_field(api, seeded_store: Store, path, change, message):
    status, payload = post(api, path, {"experiment_ids": [seeded_store.experiment_id], **change})
    assert status == 400 and payload["error_code"] == "INVALID_PARAMETER_VALUE", payload
    assert re.search(message, payload["message"]), payload["message"]


def test_malformed_json_is_a_400(api):
    status, payload = post(api, "traffic-cost/volume", b"{not json")
    assert status == 400 and payload["error_code"] == "INVALID_PARAMETER_VALUE" and "JSON" in payload["message"]


def test_unknown_experiment_and_feedback_are_404(api, seeded_store: Store):
    status, payload = post(api, "traffic-cost/volume", {"experiment_ids": [seeded_store.experiment_id, "424242"]})
    assert (status, payload["error_code"]) == (404, "RESOURCE_NOT_FOUND") and "'424242'" in payload["message"]
    status, payload = post(api, "assessments/metrics",
                           {"experiment_ids": [seeded_store.experiment_id], "assessment_name": "' OR 1=1 --"})
    assert (status, payload["error_code"]) == (404, "RESOURCE_NOT_FOUND") and "' OR 1=1 --" in payload["message"]


ROUTES_ON_AN_EMPTY_EXPERIMENT = ["traffic-cost/volume", "traffic-cost/latency", "traffic-cost/errors",
                                 "traffic-cost/tokens", "assessments/discovery", "tools/discovery", "tags/discovery",
                                 "dimensions/discovery"]


@pytest.mark.parametrize("route", ROUTES_ON_AN_EMPTY_EXPERIMENT)
def test_an_experiment_with_no_traces_answers_zeros_not_404(api, route):
    """MLflow's `Default` experiment (id 0) exists in the store but holds no trace: it used to be a 404."""
    status, payload = post(api, route, {"experiment_ids": ["0"]})
    assert status == 200, payload
    assert not any(value for key, value in payload.get("summary", {}).items() if key.endswith("count"))
    assert all(not item.get("count") and not item.get("calls") for item in payload.get("data", []))
    assert all(not point.get("count") for point in payload.get("time_series", []))


def test_openapi_page_is_served_without_a_cdn(api):
    with urllib.request.urlopen(f"{api}/docs", timeout=10) as response:
        page = response.read().decode()
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert urllib.request.urlopen(f"{api}{asset}", timeout=10).status == 200
    spec = json.loads(urllib.request.urlopen(f"{api}/openapi.json", timeout=10).read())
    insights = {f"{PREFIX}/{path}" for path in [*ENDPOINTS, "dimensions/calculate-npmi", "traffic-cost/latency"]}
    mlflow_routes = {"/api/3.0/mlflow/traces/metrics", "/api/3.0/mlflow/traces/calculate-filter-correlation"}
    assert insights | mlflow_routes | {"/api/feedback", "/report", "/api/alerts/incidents"} == set(spec["paths"])


def test_a_request_waits_while_an_extract_holds_the_write_lock(api, warehouse, seeded_store: Store):
    warehouse.dispose()  # this process's pooled read-only connection would keep the writer out
    time.sleep(1.0)  # and the server keeps the file attached for 0.25 s after an earlier test's last request
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(2)"
    ), warehouse.url.database], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    started = time.monotonic()
    status, payload = post(api, "traffic-cost/volume", {"experiment_ids": [seeded_store.experiment_id]})
    waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert status == 200 and payload["summary"]["count"] == len(seeded_store.trace_ids)
    assert waited > 0.5  # it waited for the lock instead of failing


def test_the_server_lets_go_of_the_file_soon_after_its_last_request(api, warehouse, seeded_store: Store):
    """A writer that does not announce itself (a user's DuckDB session) gets the file once the requests stop."""
    for _ in range(3):
        assert post(api, "tags/discovery", {"experiment_ids": [seeded_store.experiment_id]})[0] == 200
    warehouse.dispose()  # this process's own pooled connection, as above
    time.sleep(1.0)  # the server keeps the file attached for 0.25 s after a request
    writer = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).close()",
                             warehouse.url.database], check=False, capture_output=True, text=True, timeout=60)
    assert writer.returncode == 0, writer.stderr


def test_a_broken_outcomes_file_is_named_with_its_line_not_a_bare_500(warehouse, seeded_store: Store, tmp_path):
    outcomes = tmp_path / "outcomes.yaml"
    outcomes.write_text("min_support: 3\nassessments:\n  relevance: {below: high}\n")
    with llmops_serve({"LLMOPS_HOME": str(tmp_path / "home"), "LLMOPS_DUCKDB_PATH": warehouse.url.database,
                       "LLMOPS_OUTCOMES": str(outcomes)}) as url:
        status, answer = post(url, "correlations", {"experiment_ids": [seeded_store.experiment_id],
                                                    "dimension": {"name": "status", "parameters": {"value": "ERROR"}}})
    assert (status, answer["error_code"]) == (500, "INTERNAL_ERROR")
    assert f"{outcomes}:3" in answer["message"], answer


def test_a_warehouse_older_than_the_platform_gets_503_until_an_extract_migrates_it(seeded_store: Store, tmp_path):
    """A server upgraded before the next extract: its queries would fail on a missing column, so it says what to run."""
    from assets.traces.extract import extract_traces
    from resources.trace_sources import SqlTrackingStore
    from tests.oracle import downgrade

    warehouse = str(tmp_path / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(seeded_store.uri), warehouse)
    downgrade(warehouse, 9)
    body = {"experiment_ids": [seeded_store.experiment_id]}
    with llmops_serve({"LLMOPS_HOME": str(tmp_path / "home"), "LLMOPS_DUCKDB_PATH": warehouse}) as url:
        status, answer = post(url, "dimensions/discovery", body)
        assert status == 503 and answer["error_code"] == "TEMPORARILY_UNAVAILABLE", answer
        assert "schema version 9" in answer["message"] and "llmops extract" in answer["message"]
        extract_traces(SqlTrackingStore(seeded_store.uri), warehouse)  # migrates it
        status, answer = post(url, "dimensions/discovery", body)
        assert status == 200 and answer["data"], answer
