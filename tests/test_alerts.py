"""Alerts end to end on real parts: an agent traced with MLflow's fluent API into a SQLite store, the extract and
`alert_incidents` materialized on a real Dagster instance, notifications to a real webhook receiver and a real
SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import sqlalchemy as sa

from assets.alerts.assets import alert_incidents, no_open_incidents
from assets.alerts.evaluation import FIRING, NO_BASELINE, OK, TOO_FEW, evaluate
from assets.alerts.rules import AlertRulesFileError, load_rules
from assets.traces.assets import trace_warehouse
from orchestration.job_output import failure_reason
from resources.mlflow import MlflowResource
from resources.warehouse import WarehouseResource, sqlalchemy_engine
from tests.alert_receivers import SECRET_PATH, SmtpReceiver, WebhookReceiver
from tests.conftest import LLMOPS, PROJECT_DIR, free_port, llmops_env
from tests.mlflow_store_builders import ExperimentBuilder

SECRET = SECRET_PATH.rsplit("/", 1)[1]  # the secret part of a Slack-like webhook URL
RULES = """\
channels:
  oncall:
    webhook: ${TEST_ALERT_WEBHOOK}
  mail:
    email:
      to: [oncall@example.com]
      from: llmops@example.com
      smtp: ${TEST_ALERT_SMTP}
rules:
  - name: error-spike
    metric: error_rate
    window: 1h
    above: 0.2
    min_count: 5
    notify: [oncall, mail]
  - name: slower-than-an-hour
    metric: latency_p95_ms
    window: 1h
    above: 3600000
    min_count: 1
    notify: [oncall, mail]
"""


class FetchTimeout(Exception):
    pass


def agent_traffic(ok: int, failing: int, experiment: str = "support-agent") -> None:
    """A support agent traced by MLflow's decorators: every request searches the docs; some fetch a web page, and
    the failing ones fail there (the tool's exception fails the trace)."""

    @mlflow.trace(name="search_docs", span_type="TOOL")
    def search_docs(question: str) -> list[str]:
        return ["kb-101"]

    @mlflow.trace(name="web.fetch", span_type="TOOL")
    def web_fetch(url: str, fail: bool) -> str:
        if fail:
            raise FetchTimeout(f"{url} timed out")
        return "<html>status page</html>"

    @mlflow.trace(name="support_agent", span_type="AGENT")
    def answer(question: str, fetch: bool, fail: bool) -> str:
        search_docs(question)
        return web_fetch("https://status.example.com", fail) if fetch else "See kb-101."

    mlflow.set_experiment(experiment)
    for i in range(ok):
        answer(f"question {i}", fetch=i % 4 == 0, fail=False)
    for i in range(failing):
        with pytest.raises(FetchTimeout):
            answer(f"failing {i}", fetch=True, fail=True)


@pytest.fixture
def platform(empty_store: Path, tmp_path: Path, monkeypatch):
    """The store, warehouse, rules file and a `refresh()` that runs extract + alerts on one Dagster instance."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it: restored afterwards
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    uri = f"sqlite:///{empty_store}"
    mlflow.set_tracking_uri(uri)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    warehouse = str(tmp_path / "warehouse.duckdb")
    resources = {"mlflow": MlflowResource(tracking_uri=uri), "warehouse": WarehouseResource(path=warehouse)}

    with dg.instance_for_test() as instance:
        def refresh(raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                [trace_warehouse, alert_incidents, no_open_incidents], resources=resources, instance=instance,
                run_config={"ops": {"alert_incidents": {"config": {"rules_file": str(rules)}}}},
                raise_on_error=raise_on_error)

        yield type("Platform", (), {"refresh": staticmethod(refresh), "rules": rules, "warehouse": warehouse,
                                    "instance": instance})


def incidents(warehouse: str) -> list[dict]:
    with sqlalchemy_engine(warehouse).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text("SELECT * FROM alert_incidents ORDER BY opened_at_ms"))
                .mappings()]


def notifications(warehouse: str) -> list[dict]:
    with sqlalchemy_engine(warehouse).connect() as conn:
        return [dict(r) for r in conn.execute(sa.text("SELECT * FROM alert_notifications ORDER BY created_at_ms"))
                .mappings()]


def alert_metadata(result: dg.ExecuteInProcessResult) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("alert_incidents")[0].metadata.items()}


def quiet_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_open_incidents")


def test_a_spike_opens_one_incident_notifies_once_and_resolves_once(platform, monkeypatch):
    with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        monkeypatch.setenv("TEST_ALERT_WEBHOOK", hook.url)
        monkeypatch.setenv("TEST_ALERT_SMTP", smtp.url)
        agent_traffic(ok=12, failing=6)  # 33 % errors, all of them web.fetch timing out

        first = platform.refresh()
        [incident] = incidents(platform.warehouse)
        assert incident["rule"] == "error-spike" and incident["resolved_at_ms"] is None
        assert incident["value"] == pytest.approx(6 / 18) and incident["sample_count"] == 18
        causes = json.loads(incident["root_causes_json"])
        # every failed trace, and only those, had the tool fail with its exception: both rank first (NPMI 1)
        assert {c["description"] for c in causes[:2]} == {"tool web.fetch failed", "a span failed with FetchTimeout"}
        assert [(c["npmi"], c["intersection_count"], c["count"]) for c in causes[:2]] == [(1.0, 6, 6)] * 2
        [sent] = hook.wait_for(1)
        assert sent["body"]["event"] == "opened" and "error-spike" in sent["body"]["text"]
        assert "tool web.fetch failed" in sent["body"]["text"].split("Top root causes")[1]
        assert sent["body"]["root_causes"] == causes
        [mail] = smtp.wait_for(1)
        assert "error-spike" in mail["message"]["Subject"]
        assert "tool web.fetch failed" in mail["message"].get_content()
        metadata = alert_metadata(first)
        assert (metadata["opened"], metadata["open_incidents"], metadata["notifications_sent"]) == (1, 1, 2)
        assert "| error-spike | support-agent |" in metadata["rules"] and "| firing |" in metadata["rules"]
        assert f"| oncall | webhook http://127.0.0.1:{hook.port} | on |" in metadata["channels"]
        check = quiet_check(first)
        assert not check.passed and "error-spike in support-agent" in check.description

        second = platform.refresh()  # still firing: nothing new is sent
        assert len(incidents(platform.warehouse)) == 1 and alert_metadata(second)["notifications_sent"] == 0
        assert len(hook.requests) == 1 and len(smtp.messages) == 1

        agent_traffic(ok=40, failing=0)  # 6 of 58 failed: 10 %, under the 20 % of the rule
        third = platform.refresh()
        [incident] = incidents(platform.warehouse)
        assert incident["resolved_at_ms"] is not None and incident["last_value"] == pytest.approx(6 / 58)
        opened, resolved = hook.wait_for(2)
        assert resolved["body"]["event"] == "resolved" and resolved["body"]["text"].startswith("RESOLVED")
        assert "RESOLVED error-spike" in smtp.wait_for(2)[1]["message"]["Subject"]
        assert alert_metadata(third)["resolved"] == 1 and quiet_check(third).passed

        platform.refresh()
        assert len(hook.requests) == 2 and len(smtp.messages) == 2
        # the rule that never crossed its threshold never fired, nor sent anything
        assert all("slower-than-an-hour" not in r["body"]["text"] for r in hook.requests)
        assert [n["delivered_at_ms"] is not None for n in notifications(platform.warehouse)] == [True] * 4

        # the webhook's secret path is in no table, no metadata, no event of the run
        everything = json.dumps([incidents(platform.warehouse), notifications(platform.warehouse)], default=str)
        logs = " ".join(str(e.dagster_event or e.user_message) for e in platform.instance.all_logs(first.run_id))
        assert SECRET not in everything and SECRET not in logs and SECRET not in json.dumps(alert_metadata(first))


def test_a_receiver_down_at_first_gets_the_notification_once_it_is_up(platform, monkeypatch):
    port = free_port()
    monkeypatch.setenv("TEST_ALERT_WEBHOOK", f"http://127.0.0.1:{port}{SECRET_PATH}")
    monkeypatch.setenv("TEST_ALERT_SMTP", "smtp://127.0.0.1:1")  # no server there either, the whole test long
    agent_traffic(ok=4, failing=4)

    first = platform.refresh()
    assert alert_metadata(first)["notifications_failed"] == 2
    queued = {n["channel"]: n for n in notifications(platform.warehouse)}
    assert queued["oncall"]["delivered_at_ms"] is None and queued["oncall"]["attempts"] == 1
    assert "refused" in queued["oncall"]["last_error"] and SECRET not in queued["oncall"]["last_error"]

    with WebhookReceiver(port=port) as hook:
        platform.refresh()
        [sent] = hook.wait_for(1)
        assert sent["body"]["event"] == "opened" and sent["body"]["notification_id"] == queued["oncall"][
            "notification_id"]
        platform.refresh()
        assert len(hook.requests) == 1  # delivered once, never again
    mail = {n["channel"]: n for n in notifications(platform.warehouse)}["mail"]
    assert mail["delivered_at_ms"] is None and mail["attempts"] == 3  # still queued, tried at every evaluation
    assert len(incidents(platform.warehouse)) == 1


def test_a_bad_rules_file_fails_with_file_and_line_and_changes_nothing(platform, monkeypatch):
    monkeypatch.setenv("TEST_ALERT_WEBHOOK", f"http://127.0.0.1:{free_port()}/hook")
    monkeypatch.setenv("TEST_ALERT_SMTP", "smtp://127.0.0.1:1")
    agent_traffic(ok=4, failing=4)
    platform.refresh()
    before = (incidents(platform.warehouse), notifications(platform.warehouse))

    platform.rules.write_text(RULES.replace("above: 0.2", "above: high").replace("[oncall, mail]\n  - name: slower",
                                                                                  "[oncall, pager]\n  - name: slower"))
    agent_traffic(ok=0, failing=4)
    result = platform.refresh(raise_on_error=False)
    assert not result.success
    failure = failure_reason(result.all_events)  # what `llmops extract` prints
    assert f"{platform.rules}:13: rules.0.above" in failure
    assert f"{platform.rules}:15" not in failure  # the channels are checked once the file's shape is right
    assert (incidents(platform.warehouse), notifications(platform.warehouse)) == before

    platform.rules.write_text(RULES.replace("[oncall, mail]\n  - name: slower", "[oncall, pager]\n  - name: slower"))
    with pytest.raises(AlertRulesFileError, match=r"rules.yaml:15: rules.0.notify: no channel 'pager'"):
        load_rules(platform.rules)


def test_a_quiet_window_judges_nothing(platform, monkeypatch):
    monkeypatch.setenv("TEST_ALERT_WEBHOOK", f"http://127.0.0.1:{free_port()}/hook")
    monkeypatch.setenv("TEST_ALERT_SMTP", "smtp://127.0.0.1:1")
    agent_traffic(ok=1, failing=2)  # 67 % errors, but 3 traces: under the rule's min_count of 5
    result = platform.refresh()
    assert incidents(platform.warehouse) == [] and alert_metadata(result)["firing"] == 0
    assert "| too_few |" in alert_metadata(result)["rules"]


def test_channels_whose_variables_are_unset_are_off_and_incidents_still_open(platform, monkeypatch):
    monkeypatch.delenv("TEST_ALERT_WEBHOOK", raising=False)
    monkeypatch.delenv("TEST_ALERT_SMTP", raising=False)
    agent_traffic(ok=3, failing=3)
    result = platform.refresh()
    assert len(incidents(platform.warehouse)) == 1 and notifications(platform.warehouse) == []
    warnings = [e.message for e in platform.instance.all_logs(result.run_id) if "is off" in (e.message or "")]
    assert any("TEST_ALERT_WEBHOOK not set" in w for w in warnings)


def test_a_baseline_rule_compares_this_hour_with_the_same_hour_of_past_days(tmp_path: Path):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from assets.traces.extract import extract_traces
    from resources.trace_sources import SqlTrackingStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))
    builder = ExperimentBuilder(store, store.create_experiment("baseline"), "baseline")
    now = 1_800_000_000_000
    day, minute = 86_400_000, 60_000
    for k in range(1, 8):  # the same hour on the past 7 days: 10 traces of 1 s each day
        for i in range(10):
            builder.trace(f"past{k}-{i}", request_time=now - k * day - 30 * minute + i, duration_ms=1_000)
    for i in range(10):  # this hour: 10 traces of 3 s
        builder.trace(f"now-{i}", request_time=now - 30 * minute + i, duration_ms=3_000)
    warehouse = str(tmp_path / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(uri), warehouse)
    rules_file = tmp_path / "rules.yaml"

    def judged(condition: str, days: int = 7) -> tuple:
        rules_file.write_text(f"rules:\n  - {{name: slow, metric: latency_p95_ms, window: 1h, {condition}, "
                              f"baseline_days: {days}, min_count: 5}}\n")
        with sqlalchemy_engine(warehouse).connect() as conn:
            [found], _ = evaluate(conn, load_rules(rules_file).rules, now, "traces")
        return found.state, found.value, found.baseline, found.threshold

    assert judged("above_baseline: 2") == (FIRING, 3_000, 1_000, 2_000)
    assert judged("above_baseline: 4")[0] == OK
    assert judged("below_baseline: 0.5")[0] == OK
    rules_file.write_text("rules:\n  - {name: slow, metric: latency_p95_ms, window: 1h, above_baseline: 2, "
                          "min_count: 5}\n")
    with sqlalchemy_engine(warehouse).connect() as conn:
        [quiet], _ = evaluate(conn, load_rules(rules_file).rules, now + 3 * 3_600_000, "traces")
        [first_day], _ = evaluate(conn, load_rules(rules_file).rules, now - 7 * day, "traces")
    assert quiet.state == TOO_FEW  # no traffic in that hour
    assert first_day.state == NO_BASELINE  # the first day has no past to compare with
    assert judged("above_baseline: 2", days=1)[0] == FIRING


ENDPOINT_RULES = """\
channels:
  oncall: {webhook: "${TEST_ALERT_WEBHOOK}"}
rules:
  - {name: endpoint-down, metric: endpoint_failure_rate, window: 15m, above: 0.5, min_count: 2, notify: [oncall]}
"""


def test_an_endpoint_down_is_an_incident_like_the_others(serve, tmp_path: Path, empty_store: Path, monkeypatch):
    from assets.alerts.assets import endpoint_health
    from resources.deployment import DeploymentResource
    from resources.settings import PROJECT_DIR

    rules = tmp_path / "endpoint-rules.yaml"
    rules.write_text(ENDPOINT_RULES)
    warehouse = str(tmp_path / "warehouse.duckdb")
    resources = {
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{empty_store}"), "warehouse": WarehouseResource(path=warehouse),
        "deployment": DeploymentResource(config_path=str(PROJECT_DIR / "deploy" / "environments.yaml"),
                                         environment="dev", state_dir=str(tmp_path / "serving")),
    }
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        monkeypatch.setenv("TEST_ALERT_WEBHOOK", hook.url)

        def check() -> dict:
            result = dg.materialize([endpoint_health], resources=resources, instance=instance,
                                    run_config={"ops": {"endpoint_health": {"config": {"rules_file": str(rules)}}}})
            return {k: v.value for k, v in result.asset_materializations_for_node("endpoint_health")[0].metadata.items()}

        assert check()["note"] == "nothing is deployed to dev: nothing to check"
        _, server = serve("200", version=3)
        assert (check()["up"], check()["opened"]) == (True, 0)  # two checks, both up
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        down = check()  # 1 of 3 checks failed
        assert (down["up"], down["opened"]) == (False, 0) and "not running" in down["reason"]
        assert check()["opened"] == 0  # 2 of 4: not above half
        assert check()["opened"] == 1  # 3 of 5
        [opened] = hook.wait_for(1)
        assert opened["body"]["incident"]["scope"] == "endpoint:dev" and "endpoint-down" in opened["body"]["text"]
        assert check()["opened"] == 0 and len(hook.requests) == 1  # still down: nothing new is sent
        serve("200", version=4)  # redeployed
        results = [check() for _ in range(2)]  # 4 of 8 failed: resolved
        assert [r["resolved"] for r in results] == [0, 1] and results[1]["version"] == 4
        assert hook.wait_for(2)[1]["body"]["event"] == "resolved"
        with sqlalchemy_engine(warehouse).connect() as conn:
            ups = conn.execute(sa.text("SELECT up FROM endpoint_checks ORDER BY checked_at_ms")).scalars().all()
        assert ups == [True, True, False, False, False, False, True, True]


def test_the_seed_rules_open_an_incident_on_demo_traffic_with_a_high_error_rate(tmp_path: Path):
    """The project's rules file (channels off) on the demo agent's traffic of the last half hour: 15 % errors."""
    env = llmops_env(tmp_path)

    def llmops(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*LLMOPS, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        return done

    llmops("seed-demo", "--traces", "40", "--days", "0.02")
    done = llmops("extract")
    assert "alerts: 1 of 3 rule checks firing; incidents: 1 opened, 0 resolved, 1 open; notifications: 0 sent " \
           "(see `llmops alerts`)" in done.stdout, done.stdout
    assert "channel oncall is off (LLMOPS_ALERT_WEBHOOK_URL not set)" in done.stderr
    with sqlalchemy_engine(str(tmp_path / "home" / "warehouse.duckdb")).connect() as conn:
        [incident] = conn.execute(sa.text("SELECT * FROM alert_incidents")).mappings().all()
    assert incident["rule"] == "error-rate" and incident["scope_name"] == "llmops-demo"
    assert incident["condition"].startswith("error_rate 15.0 % > 5.0 % over 1h")
    assert json.loads(incident["root_causes_json"])  # the demo's failures go with its failing tools
    again = llmops("extract")
    assert "incidents: 0 opened, 0 resolved, 1 open" in again.stdout
    listed = llmops("alerts").stdout
    assert listed.startswith("OPEN      error-rate  llmops-demo  error_rate 15.0 % > 5.0 % over 1h") and "goes with: " \
        in listed and listed.rstrip().endswith("1 open incident."), listed


def test_a_notification_links_the_report_and_the_experiment_without_credentials():
    from assets.alerts.incidents import links

    assert links("7", "https://alice:pa55@mlflow.example.com:5000/mlflow/", "http://127.0.0.1:8000/") == {
        "report": "http://127.0.0.1:8000/report", "mlflow": "https://mlflow.example.com:5000/mlflow/#/experiments/7/traces"}
    assert links("7", "sqlite:///mlflow.db", None) == {}  # no UI to link to, no public URL
    assert links(None, "http://mlflow:5000", None) == {}  # an endpoint incident has no experiment
