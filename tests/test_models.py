"""The agent packaged, registered and deployed: local `mlflow models serve` processes for real, and Databricks
Model Serving through the real databricks-sdk against a loopback server; rollback; no token anywhere."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets.models.registry import alias_version
from assets.prompts.files import load_prompt_files
from assets.prompts.registry import promote_together, sync_prompts
from assets.vocabulary import (
    CHALLENGER,
    CHAMPION,
    EVAL_RUN_TAG,
    NOTE,
    PREVIOUS_CHAMPION,
    PRODUCTION,
    PROMPT_TAG_PREFIX,
    ROLLED_BACK_AT,
)
from orchestration.definitions import build_definitions
from resources.agent.responses_agent import INPUT_EXAMPLE
from resources.deployment import DeploymentResource
from resources.mlflow import MlflowResource
from resources.serving import _is_our_server, _port, post_json
from tests.conftest import PROJECT_DIR, edit
from tests.fake_databricks import FakeServingWorkspace

defs = build_definitions()

MODEL = "support_agent_test"


@pytest.fixture
def agent_project(empty_store: Path, tmp_path: Path) -> dict:
    """An MLflow store whose prompts are synced and in production, and deployment resources for `environment`."""
    store = empty_store
    prompts = Path(shutil.copytree(PROJECT_DIR / "prompts", tmp_path / "prompts"))
    client = MlflowClient(f"sqlite:///{store}")
    sync_prompts(client, load_prompt_files(prompts), prompts)
    promote_together(client, {"support_system": 1, "support_answer": 1}, {EVAL_RUN_TAG: "eval-1"})
    config = tmp_path / "environments.yaml"
    config.write_text("dev: {target: local, startup_timeout_s: 120}\n"
                      "prod: {target: databricks, endpoint_name: agent-prod, workload_size: Small, ready_timeout_s: 3}\n")
    return {"client": client, "prompts": prompts, "tmp": tmp_path, "resources": {
        "mlflow": MlflowResource(tracking_uri=client.tracking_uri, agent_experiment="agent-under-test"),
        "deployment": DeploymentResource(model_name=MODEL, config_path=str(config), environment="dev",
                                         state_dir=str(tmp_path / "serving")),
    }}


def materialize(names: list[str], resources: dict, instance, action: str | None = None) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {"agent_deployment": {"config": {"action": action}}}} if action else None
    return dg.materialize([defs.get_assets_def(n) for n in names], resources=resources, instance=instance,
                          run_config=run_config, raise_on_error=False)


def failure(result: dg.ExecuteInProcessResult) -> str:
    return next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message


def serving_state(project: dict) -> dict:
    return json.loads((project["tmp"] / "serving" / "dev.json").read_text())


def new_prompt_version(project: dict) -> None:
    edit(project["prompts"] / "support_system.yaml", "concise", "brief")
    sync_prompts(project["client"], load_prompt_files(project["prompts"]), project["prompts"])
    promote_together(project["client"], {"support_system": 2, "support_answer": 1}, {EVAL_RUN_TAG: "eval-2"})


def test_local_deploy_replace_fail_and_roll_back_leave_no_orphans(agent_project: dict):
    client, resources = agent_project["client"], agent_project["resources"]
    servers: list[tuple[int, int]] = []  # (pid, port) of each server a deployment started
    # A server left "pending" by a run that died while starting it: the next deployment must stop it.
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "serve", "-p", "45999"],
                                start_new_session=True)
    (agent_project["tmp"] / "serving").mkdir()
    (agent_project["tmp"] / "serving" / "dev.json").write_text(json.dumps({"pending": {"pid": leftover.pid, "port": 45999}}))
    try:
        with dg.instance_for_test() as instance:
            # register once; a second run registers nothing
            assert materialize(["agent_model"], resources, instance).success
            again = materialize(["agent_model"], resources, instance)
            metadata = again.asset_materializations_for_node("agent_model")[0].metadata
            assert metadata["new_version"].value is False
            assert metadata[NOTE].value == (f"Nothing to register: {MODEL} version 1 already holds this code, config "
                                            "and prompts")
            assert [int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == [1]
            version = client.get_model_version(MODEL, "1")
            assert version.tags[PROMPT_TAG_PREFIX + "support_system"] == "1" and version.tags[EVAL_RUN_TAG] == "eval-1"

            # deploy version 1: a real server answers, champion moves, the call is traced
            first = materialize(["agent_deployment"], resources, instance)
            assert first.success, failure(first)
            leftover.wait(timeout=10)  # stopped by the deployment (killpg), reaped here
            meta = first.asset_materializations_for_node("agent_deployment")[0].metadata
            url, smoke_ms = meta["endpoint"].value, meta["smoke_latency_ms"].value
            servers.append((serving_state(agent_project)["active"]["pid"], _port(url)))
            answer, _ = post_json(f"{url}/invocations", INPUT_EXAMPLE)
            assert "Source: kb-101" in answer["output"][0]["content"][0]["text"] and smoke_ms > 0
            assert answer["custom_outputs"]["prompt_versions"] == {"support_system": 1, "support_answer": 1}
            assert int(alias_version(client, MODEL, CHAMPION).version) == 1
            experiment = client.get_experiment_by_name("agent-under-test")
            deadline = time.monotonic() + 30  # tracing stays on; the server exports its traces asynchronously
            while not client.search_traces(locations=[experiment.experiment_id]) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.search_traces(locations=[experiment.experiment_id], max_results=10)
            # the first champion replaced nothing: a rollback has nothing to do and succeeds saying so
            nothing = materialize(["agent_deployment"], resources, instance, action="rollback")
            assert nothing.success, failure(nothing)
            metadata = nothing.asset_materializations_for_node("agent_deployment")[0].metadata
            assert metadata[NOTE].value == f"Nothing to roll back: {MODEL} has no champion that replaced an earlier version"
            assert metadata["changed"].value is False and serving_state(agent_project)["active"]["pid"] == servers[0][0]
            # nothing changed: nothing is restarted
            same = materialize(["agent_model", "agent_deployment"], resources, instance)
            metadata = same.asset_materializations_for_node("agent_deployment")[0].metadata
            assert metadata[NOTE].value == f"Nothing to deploy: {MODEL} version 1 (the challenger) already serves dev"
            assert metadata["changed"].value is False and serving_state(agent_project)["active"]["pid"] == servers[0][0]

            # a new production prompt makes version 2, which replaces version 1 on a new port
            new_prompt_version(agent_project)
            second = materialize(["agent_model", "agent_deployment"], resources, instance)
            assert second.success, failure(second)
            url2 = second.asset_materializations_for_node("agent_deployment")[0].metadata["endpoint"].value
            servers.append((serving_state(agent_project)["active"]["pid"], _port(url2)))
            assert url2 != url and not _is_our_server(*servers[0])
            answer, _ = post_json(f"{url2}/invocations", INPUT_EXAMPLE)
            assert answer["custom_outputs"]["prompt_versions"]["support_system"] == 2
            assert client.get_model_version(MODEL, "2").tags[PREVIOUS_CHAMPION] == "1"
            assert int(alias_version(client, MODEL, CHALLENGER).version) == 2

            # a version that cannot load fails the run; version 2 keeps serving and stays champion
            client.delete_prompt_alias("support_answer", PRODUCTION)
            client.set_registered_model_alias(MODEL, CHALLENGER, "1")
            broken = materialize(["agent_deployment"], resources, instance)
            assert not broken.success and "version 1 was not deployed to dev" in failure(broken)
            assert "the server exited" in failure(broken) and "support_answer" in failure(broken)
            assert post_json(f"{url2}/invocations", INPUT_EXAMPLE)[0]["custom_outputs"]["prompt_versions"]["support_system"] == 2
            assert int(alias_version(client, MODEL, CHAMPION).version) == 2 and "pending" not in serving_state(agent_project)
            client.set_prompt_alias("support_answer", PRODUCTION, 1)

            # rollback serves version 1 again and moves champion back
            rolled = materialize(["agent_deployment"], resources, instance, action="rollback")
            assert rolled.success, failure(rolled)
            url3 = rolled.asset_materializations_for_node("agent_deployment")[0].metadata["endpoint"].value
            assert post_json(f"{url3}/invocations", INPUT_EXAMPLE)[0]["custom_outputs"]["prompt_versions"] == {
                "support_system": 2, "support_answer": 1}  # version 1 of the model, today's production prompts
            assert int(alias_version(client, MODEL, CHAMPION).version) == 1
            assert ROLLED_BACK_AT in client.get_model_version(MODEL, "2").tags
            servers.append((serving_state(agent_project)["active"]["pid"], _port(url3)))
            assert not _is_our_server(*servers[1])
    finally:
        resources["deployment"].target(client.tracking_uri, "agent-under-test").stop()
        if leftover.poll() is None:
            os.killpg(leftover.pid, signal.SIGKILL)
    # still a model server on its port, not merely alive: under load the system hands a stopped server's pid to
    # another process or thread within seconds
    alive = [pid for pid, port in servers if _is_our_server(pid, port)]
    assert not alive, f"orphan servers: {alive}"
    ours = subprocess.run(["pgrep", "-f", f"models serve -m models:/{MODEL}/"], capture_output=True, text=True)
    assert not ours.stdout.strip(), f"orphan servers: {ours.stdout}"


@pytest.fixture
def databricks_env(agent_project: dict, monkeypatch):
    def start(mode: str) -> FakeServingWorkspace:
        fake = FakeServingWorkspace(mode).__enter__()
        monkeypatch.setenv("DATABRICKS_HOST", fake.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", agent_project["client"].tracking_uri)  # the fake loads models
        started.append(fake)
        return fake

    started: list[FakeServingWorkspace] = []
    dev = agent_project["resources"]["deployment"]
    agent_project["resources"]["deployment"] = DeploymentResource(
        model_name=dev.model_name, config_path=dev.config_path, environment="prod", state_dir=dev.state_dir)
    yield start
    for fake in started:
        fake.__exit__()


TOKEN = "dapi-0123456789abcdef-secret"


def test_databricks_deploy_update_and_rollback_through_the_sdk(agent_project: dict, databricks_env):
    fake, client, resources = databricks_env("ok"), agent_project["client"], agent_project["resources"]
    with dg.instance_for_test() as instance:
        first = materialize(["agent_model", "agent_deployment"], resources, instance)
        assert first.success, failure(first)
        assert fake.served_version("agent-prod") == "1"
        calls = [r for r in fake.requests if not r["path"].startswith("/.well-known/")]  # the SDK's host discovery
        get = ("GET", "/api/2.0/serving-endpoints/agent-prod")  # what serves now, then the deployment's own look
        assert [(r["method"], r["path"]) for r in calls[:3]] == [get, get, ("POST", "/api/2.0/serving-endpoints")]
        created = calls[2]["body"]["config"]["served_entities"][0]
        assert (created["entity_name"], created["workload_size"], created["scale_to_zero_enabled"]) == (MODEL, "Small", True)
        assert {r["auth"] for r in calls} == {f"Bearer {TOKEN}"}  # unified auth from the environment
        meta = first.asset_materializations_for_node("agent_deployment")[0].metadata
        assert meta["endpoint"].value == f"{fake.url}/serving-endpoints/agent-prod/invocations"

        new_prompt_version(agent_project)
        second = materialize(["agent_model", "agent_deployment"], resources, instance)
        assert second.success, failure(second)
        assert fake.served_version("agent-prod") == "2" and int(alias_version(client, MODEL, CHAMPION).version) == 2
        assert ("PUT", "/api/2.0/serving-endpoints/agent-prod/config") in [(r["method"], r["path"]) for r in fake.requests]

        rolled = materialize(["agent_deployment"], resources, instance, action="rollback")
        assert rolled.success, failure(rolled)
        assert fake.served_version("agent-prod") == "1" and int(alias_version(client, MODEL, CHAMPION).version) == 1
        run_ids = [r.run_id for r in (first, second, rolled)]
        logs = "\n".join(str(entry) for run_id in run_ids for entry in instance.all_logs(run_id))

    # the token appears in no Dagster log or metadata, and nowhere in MLflow
    assert TOKEN not in logs and "Bearer" not in logs
    mlflow_text = [str(v.tags) for v in client.search_model_versions(f"name = '{MODEL}'")]
    mlflow_text += [str(client.get_registered_model(MODEL))]
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            mlflow_text += [str(run.data.params), str(run.data.tags), str(run.data.metrics)]
    assert not any(TOKEN in text for text in mlflow_text)
    artifacts = [p for p in agent_project["tmp"].rglob("*") if p.is_file() and p.suffix not in (".db",)]
    assert artifacts and not any(TOKEN.encode() in p.read_bytes() for p in artifacts)


@pytest.mark.parametrize("mode, message", [
    ("never_ready", "did not finish updating to version 2 within 3 s"),  # Databricks keeps the old config serving
    ("broken", "model failed to load: ImportError"),  # the smoke test fails: the old config is put back
])
def test_a_databricks_deployment_that_fails_keeps_the_champion_serving(agent_project: dict, databricks_env, mode,
                                                                       message):
    client, resources = agent_project["client"], agent_project["resources"]
    fake = databricks_env("ok")
    with dg.instance_for_test() as instance:
        assert materialize(["agent_model", "agent_deployment"], resources, instance).success
        fake.mode = mode
        new_prompt_version(agent_project)
        failed = materialize(["agent_model", "agent_deployment"], resources, instance)
    assert not failed.success and message in failure(failed)
    assert fake.served_version("agent-prod") == "1" and int(alias_version(client, MODEL, CHAMPION).version) == 1
    assert int(alias_version(client, MODEL, CHALLENGER).version) == 2


def test_agent_rollback_before_any_deployment_succeeds_with_a_note(agent_project: dict):
    client, resources = agent_project["client"], agent_project["resources"]
    with dg.instance_for_test() as instance:
        assert materialize(["agent_model"], resources, instance).success
        result = materialize(["agent_deployment"], resources, instance, action="rollback")
        assert result.success, failure(result)
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.INFO]
    metadata = result.asset_materializations_for_node("agent_deployment")[0].metadata
    note = f"Nothing to roll back: {MODEL} has no champion that replaced an earlier version"
    assert metadata[NOTE].value == note and metadata["changed"].value is False and note in logs
    assert alias_version(client, MODEL, CHAMPION) is None and int(alias_version(client, MODEL, CHALLENGER).version) == 1
    assert not (agent_project["tmp"] / "serving").exists()  # no server was started or stopped


def test_bad_deployment_config_names_the_problem(agent_project: dict):
    config = Path(agent_project["resources"]["deployment"].config_path)
    config.write_text("dev: {target: local, startup_timeout_s: soon}\n")
    resources = agent_project["resources"]
    with dg.instance_for_test() as instance:
        assert materialize(["agent_model"], resources, instance).success
        result = materialize(["agent_deployment"], resources, instance)
    assert f"{config}: dev.local.startup_timeout_s: Input should be a valid number" in failure(result)
