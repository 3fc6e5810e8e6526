"""Where people look at alert incidents: list_incidents, `GET /api/alerts/incidents`, `llmops alerts` (a real
subprocess) and the report's Alerts section, over real DuckDB warehouses with incident rows inserted by SQL."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest
from fastapi.testclient import TestClient

from assets.alerts.listing import RootCause, list_incidents
from assets.insights.outcomes import OutcomeRules
from assets.insights.report import render_report
from assets.insights.rollups import write_root_causes
from orchestration.api import create_app
from resources.warehouse import MIGRATIONS, WarehouseResource, sqlalchemy_engine
from tests.conftest import LLMOPS, PROJECT_DIR, llmops_env
from tests.oracle import UNDO_MIGRATION

TOKEN = "alerts-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SCRIPT = "tool <script>alert(1)</script> failed"


def _ms(hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 12, 2, hour, minute, tzinfo=timezone.utc).timestamp() * 1000)


CAUSES = [
    {"description": "tool web.fetch failed", "dimension": "tools.web.fetch", "parameters": {"status": "ERROR"},
     "npmi": 0.6234, "count": 12, "intersection_count": 9, "mlflow_filter": "span.name = 'web.fetch'"},
    {"description": SCRIPT, "dimension": "tools.x", "parameters": {}, "npmi": 0.4, "count": 5,
     "intersection_count": 3, "mlflow_filter": None},
]
# (incident id, rule, scope, experiment, scope name, opened, resolved, condition, root causes)
INCIDENTS = [
    ("inc-slow", "latency-slow", "1", "1", "llmops-demo", _ms(13, 5), _ms(14, 10), "p95_latency 2400 > 1500 over 1h",
     []),
    ("inc-errors", "error-spike", "1", "1", "llmops-demo", _ms(15), None, "error_rate 0.31 > 0.05 over 1h", CAUSES),
    ("inc-other", "error-spike", "2", "2", "other-app", _ms(14, 30), None, "error_rate 0.2 > 0.05 over 1h", []),
    ("inc-down", "endpoint-down", "endpoint:dev", None, "dev", _ms(16), None, "up 0 < 1 over 10m", []),
]
# (incident id, event, channel, created, attempts, delivered, last error)
NOTIFICATIONS = [
    ("inc-errors", "opened", "oncall", _ms(15), 2, None, "connection refused"),
    ("inc-errors", "opened", "email", _ms(15), 1, _ms(15, 1), None),
    ("inc-slow", "opened", "oncall", _ms(13, 5), 1, _ms(13, 6), None),
    ("inc-slow", "resolved", "oncall", _ms(14, 10), 0, None, None),
]


def _warehouse(path: Path, incidents=INCIDENTS, notifications=NOTIFICATIONS) -> str:
    """A migrated warehouse at `path` holding `incidents` and `notifications`, and the root_causes table the
    report reads."""
    with WarehouseResource(path=str(path)).migrated() as con:
        for number, (incident_id, rule, scope, experiment, name, opened, resolved, condition, causes) in enumerate(
                incidents):
            con.execute("INSERT INTO alert_incidents VALUES (?, ?, 'error_rate', ?, ?, ?, ?, ?, 3600, 'above', 0.05, "
                        "NULL, 0.31, ?, ?, ?, 0.2, ?)",
                        [incident_id, rule, scope, experiment, name, opened, resolved, 40 + number, condition,
                         json.dumps(causes), resolved or opened])
        for number, (incident_id, event, channel, created, attempts, delivered, error) in enumerate(notifications):
            con.execute("INSERT INTO alert_notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [f"n{number}", incident_id, event, channel, created, attempts, created if attempts else None,
                         delivered, error])
    with sqlalchemy_engine(str(path), read_only=False).begin() as conn:
        write_root_causes(conn, OutcomeRules(min_support=1))
    return str(path)


@pytest.fixture(scope="module")
def alerts_warehouse(tmp_path_factory) -> str:
    return _warehouse(tmp_path_factory.mktemp("alerts") / "warehouse.duckdb")


def _pre_migration_9(path: Path) -> str:
    """A warehouse without the alert tables (migration 9), as one written before them had."""
    con = duckdb.connect(str(path))
    for ddl in MIGRATIONS:
        con.execute(ddl)
    for undo in UNDO_MIGRATION[9]:
        con.execute(undo)
    con.close()
    with sqlalchemy_engine(str(path), read_only=False).begin() as conn:
        write_root_causes(conn, OutcomeRules(min_support=1))
    return str(path)


def _ids(incidents) -> list[str]:
    return [i.incident_id if hasattr(i, "incident_id") else i["incident_id"] for i in incidents]


def test_list_incidents_open_by_default_newest_first_with_causes_and_notifications(alerts_warehouse: str):
    engine = sqlalchemy_engine(alerts_warehouse)
    with engine.connect() as conn:
        opened = list_incidents(conn)
        everything = list_incidents(conn, state="all")
        resolved = list_incidents(conn, state="resolved")
        of_one = list_incidents(conn, state="all", experiment_ids=["1"])
        of_two = list_incidents(conn, experiment_ids=["2", "unknown"])
        newest = list_incidents(conn, state="all", limit=1)
    engine.dispose()
    assert _ids(opened) == ["inc-down", "inc-errors", "inc-other"]
    assert {i.state for i in opened} == {"open"} and all(i.resolved_at_ms is None for i in opened)
    assert _ids(everything) == ["inc-down", "inc-errors", "inc-other", "inc-slow"]
    assert _ids(resolved) == ["inc-slow"] and resolved[0].state == "resolved"
    assert resolved[0].resolved_at_ms == _ms(14, 10)
    assert _ids(of_one) == ["inc-errors", "inc-slow"] and _ids(of_two) == ["inc-other"]
    assert _ids(newest) == ["inc-down"]

    errors = opened[1]
    assert errors.root_causes == [RootCause(**cause) for cause in CAUSES]
    assert errors.root_causes[0].npmi == 0.6234 and errors.root_causes[1].mlflow_filter is None
    assert (errors.rule, errors.scope_name, errors.condition, errors.sample_count) == (
        "error-spike", "llmops-demo", "error_rate 0.31 > 0.05 over 1h", 41)
    assert [(n.channel, n.event, n.delivered_at_ms, n.attempts, n.last_error) for n in errors.notifications] == [
        ("email", "opened", _ms(15, 1), 1, None), ("oncall", "opened", None, 2, "connection refused")]
    assert [(n.event, n.delivered_at_ms is not None) for n in resolved[0].notifications] == [
        ("opened", True), ("resolved", False)]
    assert opened[0].experiment_id is None and opened[0].notifications == [] and opened[0].root_causes == []


def test_a_warehouse_before_the_alert_tables_lists_no_incidents(tmp_path: Path):
    path = _pre_migration_9(tmp_path / "old.duckdb")
    engine = sqlalchemy_engine(path)  # read-only: nothing can create the tables
    with engine.connect() as conn:
        assert list_incidents(conn, state="all") == []
    engine.dispose()
    with TestClient(create_app(path)) as client:  # the server's attached connection
        answer = client.get("/api/alerts/incidents", params={"state": "all"})
    assert (answer.status_code, answer.json()) == (200, {"incidents": []})


def test_the_api_lists_incidents_as_json_and_refuses_bad_parameters(alerts_warehouse: str):
    with TestClient(create_app(alerts_warehouse, token=TOKEN)) as client:
        default = client.get("/api/alerts/incidents", headers=BEARER)
        filtered = client.get("/api/alerts/incidents?state=all&experiment_id=1&experiment_id=2&limit=2",
                              headers=BEARER)
        resolved = client.get("/api/alerts/incidents?state=resolved", headers=BEARER)
        bogus = client.get("/api/alerts/incidents?state=bogus", headers=BEARER)
        zero = client.get("/api/alerts/incidents?limit=0", headers=BEARER)
        too_many = client.get("/api/alerts/incidents?limit=1001", headers=BEARER)
        anonymous = client.get("/api/alerts/incidents")
        schema = client.get("/openapi.json", headers=BEARER).json()
    assert default.status_code == 200
    incidents = default.json()["incidents"]
    assert _ids(incidents) == ["inc-down", "inc-errors", "inc-other"]
    errors = incidents[1]
    assert errors["state"] == "open" and errors["root_causes"][0] == CAUSES[0] and "root_causes_json" not in errors
    assert errors["notifications"][1] == {"channel": "oncall", "event": "opened", "delivered_at_ms": None,
                                          "attempts": 2, "last_error": "connection refused"}
    assert _ids(filtered.json()["incidents"]) == ["inc-errors", "inc-other"]
    assert [i["state"] for i in resolved.json()["incidents"]] == ["resolved"]
    for answer, parameter in ((bogus, "state"), (zero, "limit"), (too_many, "limit")):
        assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert answer.json()["message"].startswith(f"query.{parameter}:")
    assert anonymous.status_code == 401 and anonymous.json()["error_code"] == "UNAUTHENTICATED"
    assert schema["paths"]["/api/alerts/incidents"]["get"]["tags"] == ["alerts"]


def _alerts(tmp_path: Path, warehouse: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMOPS, "alerts", *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=180,
                          env=llmops_env(tmp_path, LLMOPS_DUCKDB_PATH=warehouse))


def test_llmops_alerts_shows_each_open_incident_with_causes_and_notifications(alerts_warehouse: str,
                                                                              tmp_path: Path):
    done = _alerts(tmp_path, alerts_warehouse)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "OPEN      endpoint-down  dev  up 0 < 1 over 10m  since 2026-12-02 16:00 UTC\n\n"
        "OPEN      error-spike  llmops-demo  error_rate 0.31 > 0.05 over 1h  since 2026-12-02 15:00 UTC\n"
        "  goes with: tool web.fetch failed (NPMI 0.62, 9 of 12)\n"
        f"  goes with: {SCRIPT} (NPMI 0.40, 3 of 5)\n"
        "  notified: email (delivered)\n"
        "  notified: oncall (pending: connection refused, 2 attempts)\n\n"
        "OPEN      error-spike  other-app  error_rate 0.2 > 0.05 over 1h  since 2026-12-02 14:30 UTC\n\n"
        "3 open incidents.\n")

    everything = _alerts(tmp_path, alerts_warehouse, "--all", "--limit", "4")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.endswith(
        "RESOLVED  latency-slow  llmops-demo  p95_latency 2400 > 1500 over 1h  2026-12-02 13:05 → 14:10 UTC\n"
        "  notified: oncall (delivered)\n"
        "  notified of the resolution: oncall (pending)\n\n"
        "3 open incidents, 1 resolved (the newest 4: see --limit).\n")

    as_json = _alerts(tmp_path, alerts_warehouse, "--json")
    assert as_json.returncode == 0, as_json.stderr
    with TestClient(create_app(alerts_warehouse)) as client:
        assert json.loads(as_json.stdout) == client.get("/api/alerts/incidents").json()


def test_llmops_alerts_on_an_empty_warehouse_and_without_one(tmp_path: Path):
    empty = _warehouse(tmp_path / "empty.duckdb", incidents=[], notifications=[])
    done = _alerts(tmp_path, empty)
    assert (done.returncode, done.stdout) == (0, "No open incidents.\n"), done.stderr

    missing = tmp_path / "nowhere" / "warehouse.duckdb"
    refused = _alerts(tmp_path, str(missing))
    assert refused.returncode == 1 and not missing.exists()
    assert refused.stderr.strip() == f"Error: the warehouse {missing} does not exist yet: run `llmops extract`"


def test_the_report_opens_with_the_alerts_escaped(tmp_path: Path):
    path = _warehouse(tmp_path / "warehouse.duckdb", incidents=INCIDENTS[:2], notifications=[])
    engine = sqlalchemy_engine(path)
    with engine.connect() as conn:
        page = render_report(conn, tmp_path / "insights.html").path.read_text()
    engine.dispose()
    body = page[page.index("<body>"):]
    alerts = body[body.index('<section id="alerts">'):body.index("</section>")]
    assert body.index('<section id="alerts">') < body.index("The warehouse has no production traces yet.")
    opened, resolved = alerts.split("Last resolved")
    assert "error-spike" in opened and "llmops-demo" in opened and "error_rate 0.31 &gt; 0.05 over 1h" in opened
    assert "2026-12-02 15:00 UTC" in opened and "tool web.fetch failed (NPMI 0.62, 9 of 12)" in opened
    assert "tool &lt;script&gt;alert(1)&lt;/script&gt; failed (NPMI 0.40, 3 of 5)" in opened
    assert "<script>alert" not in page and "latency-slow" not in opened
    assert "latency-slow" in resolved and "2026-12-02 13:05 → 14:10 UTC" in resolved


def test_the_report_without_incidents_or_alert_tables_says_no_incidents(tmp_path: Path):
    for path in (_warehouse(tmp_path / "empty.duckdb", incidents=[], notifications=[]),
                 _pre_migration_9(tmp_path / "old.duckdb")):
        engine = sqlalchemy_engine(path)
        with engine.connect() as conn:
            page = render_report(conn, tmp_path / "insights.html").path.read_text()
        engine.dispose()
        assert '<section id="alerts"><h2>Alerts</h2><p>No incidents.</p></section>' in page
