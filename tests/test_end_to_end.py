"""The platform as a user runs it from the Dagster UI: dagster-webserver and dagster-daemon on 127.0.0.1 with
workspace.yaml and a fresh DAGSTER_HOME, jobs launched and a sensor started through the webserver's GraphQL API as
the UI does, then the warehouse, the prompt aliases, the deployment and the review queue checked in the real
systems."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import mlflow
import pytest
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.genai import review_queues

from resources.serving import _is_our_server, _port, post_json
from resources.warehouse import CONTRACT_TABLES
from tests.conftest import free_port, wait_until_serving

PROJECT_DIR = Path(__file__).resolve().parent.parent
REPOSITORY = {"repositoryLocationName": "llmops", "repositoryName": "__repository__"}
TRACES = 30


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except ProcessLookupError:
                pass
    return members


@contextmanager
def dagster_services(env: dict[str, str]) -> Iterator[str]:
    """dagster-webserver and dagster-daemon, each in its own process group (their code servers and run workers
    join it); yields the webserver URL; on exit stops both and checks that no process of theirs is left."""
    port = free_port()
    commands = [[sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"]]
    logs = Path(env["LLMOPS_HOME"])
    services = [subprocess.Popen(command, cwd=PROJECT_DIR, env=env, start_new_session=True,
                                 stdout=open(logs / f"service{i}.log", "w"), stderr=subprocess.STDOUT)
                for i, command in enumerate(commands)]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/server_info", services, lambda: "".join(
            (logs / f"service{i}.log").read_text() for i in range(len(services))), timeout_s=180)
        yield url
    finally:
        for service in services:
            try:
                os.killpg(service.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for service in services:
            service.wait(timeout=60)
        deadline = time.monotonic() + 30
        while (left := [p for s in services for p in _group_members(s.pid)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left behind: {left}"


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(request, timeout=120))
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
FAILURES = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } } } }"""


START_SENSOR = """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }"""
RUNS = """query($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId } } } }"""


def launch_and_wait(url: str, job: str, timeout_s: float = 600) -> None:
    """Launch `job` as the UI's Launchpad does, and wait until the daemon has run it to success."""
    launched = graphql(url, LAUNCH, {"params": {"selector": {**REPOSITORY, "jobName": job}, "runConfigData": {}}})
    assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
    wait_for_run(url, job, launched["launchRun"]["run"]["runId"], timeout_s)


def wait_for_run(url: str, job: str, run_id: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := graphql(url, STATUS, {"id": run_id})["runOrError"]["status"]) not in ("SUCCESS", "FAILURE",
                                                                                          "CANCELED"):
        assert time.monotonic() < deadline, f"{job} still {status}"
        time.sleep(1)
    if status != "SUCCESS":
        events = graphql(url, FAILURES, {"id": run_id})["logsForRun"]["events"]
        pytest.fail(f"{job} ended {status}: {[e for e in events if e.get('stepKey')]}")


def queued_traces(home: Path) -> set[str]:
    """The traces in the demo experiment's review queues (one per rule and UTC day: a run across midnight has two)."""
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    experiment = mlflow.MlflowClient().get_experiment_by_name("llmops-demo")
    return {i.item_id for queue in review_queues.list_review_queues(experiment_id=experiment.experiment_id)
            for i in review_queues.list_review_queue_items(queue.queue_id, max_results=1000)}


@pytest.fixture
def user_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A newcomer's environment: only LLMOPS_HOME set (everything else is the embedded default), automation off
    so that only what the test starts runs, feedback routable at once; seeded with demo traffic by
    `llmops seed-demo`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "DAGSTER_", "MLFLOW_"))}
    home = tmp_path / "home"
    env |= {"LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "LLMOPS_AUTOMATION": "off",
            "LLMOPS_FEEDBACK_SETTLE_S": "0", "PYTHONPATH": str(PROJECT_DIR)}
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "seed-demo", "--traces", str(TRACES)],
                          cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    yield env
    # whatever happened in the test, no model server is left behind
    subprocess.run([sys.executable, "-m", "orchestration.cli", "stop-serving"], cwd=PROJECT_DIR, env=env,
                   capture_output=True, timeout=120)


@pytest.mark.slow
def test_jobs_launched_from_the_ui_build_the_whole_platform(user_env: dict[str, str]):
    home = Path(user_env["LLMOPS_HOME"])
    with dagster_services(user_env) as url:
        nodes = graphql(url, "{ assetNodes { assetKey { path } groupName description owners { "
                        "... on TeamAssetOwner { team } } kinds hasAssetChecks } }")["assetNodes"]
        assert len(nodes) == len(CONTRACT_TABLES) + 12
        assert all(n["groupName"] != "default" and n["description"] and n["owners"] and n["kinds"] for n in nodes)
        assert {n["assetKey"]["path"][0] for n in nodes if n["hasAssetChecks"]} == {*CONTRACT_TABLES, "prompt_evals",
                                                                                 "alert_incidents"}
        schedules = graphql(url, "query($r: RepositorySelector!) { schedulesOrError(repositorySelector: $r) { "
                            "... on Schedules { results { name cronSchedule scheduleState { status } } } } }",
                            {"r": REPOSITORY})["schedulesOrError"]["results"]
        assert {(s["name"], s["cronSchedule"], s["scheduleState"]["status"]) for s in schedules} == {
            ("warehouse_refresh_hourly", "0 * * * *", "STOPPED"), ("evals_daily", "0 6 * * *", "STOPPED"),
            ("endpoint_health_check", "*/5 * * * *", "STOPPED")}

        launch_and_wait(url, "main")
        launch_and_wait(url, "agent_release")

        # Later, a user gives a thumbs down; the hourly refresh copies it, and the feedback sensor — started in
        # the UI — has the daemon launch a labeling run that puts the trace up for review.
        mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            every = [r[0] for r in con.execute("SELECT trace_id FROM traces ORDER BY trace_id").fetchall()]
        fresh = next(t for t in every if t not in queued_traces(home))
        mlflow.log_feedback(trace_id=fresh, name="user_thumbs", value=False,
                            source=AssessmentSource(AssessmentSourceType.HUMAN, "user-1"))
        launch_and_wait(url, "warehouse_refresh")
        started = graphql(url, START_SENSOR, {"s": {**REPOSITORY, "sensorName": "negative_feedback_sensor"}})
        assert started["startSensor"]["__typename"] == "Sensor", started
        deadline = time.monotonic() + 180
        while not (runs := graphql(url, RUNS, {"job": "labeling"})["runsOrError"]["results"]):
            assert time.monotonic() < deadline, "the sensor launched no labeling run"
            time.sleep(2)
        for run in runs:
            wait_for_run(url, "labeling", run["runId"])

    # every trace MLflow has: the demo traffic, the evaluations' and the deployment smoke test's
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    in_mlflow = {t.info.trace_id for t in mlflow.search_traces(locations=experiments, include_spans=False,
                                                                return_type="list")}
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert {r[0] for r in con.execute("SELECT trace_id FROM traces").fetchall()} == in_mlflow
        demo = client.get_experiment_by_name("llmops-demo").experiment_id  # the seeded traffic + the served agent's
        assert con.execute("SELECT count(*) FROM traces WHERE experiment_id = ?", [demo]).fetchone()[0] > TRACES
        negatives = {r[0] for r in con.execute(
            "SELECT DISTINCT trace_id FROM assessments WHERE name = 'user_thumbs' AND NOT bool_value "
            "AND source_type = 'HUMAN' AND valid").fetchall()}
        assert con.execute("SELECT count(*) FROM root_causes").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM eval_runs").fetchone()[0] >= 1
        (queued,) = con.execute("SELECT sum(items) FROM labeling_progress").fetchone()
    assert fresh in negatives and queued >= len(negatives)  # the negatives, plus controls

    assert client.get_prompt_version_by_alias("support_system", "production").version == 1
    # artifacts (logged models, evaluation results) are beside the store, not in the folder the services run in
    assert all(e.artifact_location.startswith(home.as_uri()) for e in client.search_experiments() if e.name != "Default")
    assert negatives <= queued_traces(home)

    state = json.loads((home / "serving" / "dev.json").read_text())["active"]
    answer, _ = post_json(f"{state['url']}/invocations",
                          {"input": [{"role": "user", "content": "How do I refresh a dashboard?"}]})
    assert "kb-" in json.dumps(answer)
    assert client.get_model_version_by_alias("llmops_support_agent", "champion").version == state["version"]
    stopped = subprocess.run([sys.executable, "-m", "orchestration.cli", "stop-serving"], cwd=PROJECT_DIR,
                             env=user_env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not _is_our_server(state["pid"], _port(state["url"]))
