"""The health probe alerting runs against the deployed champion: local servers are real processes on real ports,
Databricks endpoints are a loopback workspace spoken to by the real databricks-sdk."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config

from resources.serving import DatabricksServing, DatabricksTarget, LocalServing, LocalTarget
from tests.conftest import free_port
from tests.fake_databricks import FakeServingWorkspace

def test_a_local_server_answering_ping_is_up_with_its_version_and_latency(serve):
    health = serve("200", version=4)[0].health()
    assert (health.environment, health.up, health.version, health.reason) == ("dev", True, 4, None)
    assert 0 < health.latency_ms < 5000


def test_a_local_server_that_died_is_down_and_names_its_pid(serve):
    serving, process = serve("200")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    health = serving.health()
    assert not health.up and health.version == 4 and health.latency_ms is None
    assert health.reason == f"the server (pid {process.pid}) is not running"


@pytest.mark.parametrize("mode, reason", [
    ("503", "/ping answered 503"),
    ("silent", "no answer on /ping within 0.5 s"),
    ("closed", "connection refused"),
])
def test_a_local_server_that_does_not_answer_200_is_down_with_why(serve, mode, reason):
    started = time.monotonic()
    health = serve(mode)[0].health(timeout_s=0.5)
    assert (health.up, health.version, health.latency_ms, health.reason) == (False, 4, None, reason)
    assert time.monotonic() - started < 5


def test_nothing_deployed_locally_is_no_health_at_all(tmp_path: Path):
    serving = LocalServing(tmp_path / "serving", "dev", LocalTarget(target="local"), {})
    assert serving.health() is None  # no state file
    serving._save({"pending": {"pid": os.getpid(), "port": free_port()}})  # a deployment that never went live
    assert serving.health() is None


# --- Databricks -----------------------------------------------------------------------------------------------------

TOKEN = "dapi-0123456789abcdef-secret"
ENDPOINT = "llmops-support-agent"


@pytest.fixture
def workspace(monkeypatch, tmp_path: Path):
    """A loopback workspace, and unified auth pointing at it from the environment (nothing else of this host's)."""
    for name in [n for n in os.environ if n.startswith(("DATABRICKS_", "ARM_", "GOOGLE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no.databrickscfg"))
    with FakeServingWorkspace() as fake:
        monkeypatch.setenv("DATABRICKS_HOST", fake.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        yield fake


def databricks(client: WorkspaceClient | None = None) -> DatabricksServing:
    return DatabricksServing("prod", DatabricksTarget(target="databricks", endpoint_name=ENDPOINT), client)


def test_an_endpoint_never_created_is_no_health_at_all(workspace):
    assert databricks().health() is None
    assert [r["path"] for r in workspace.requests] == [f"/api/2.0/serving-endpoints/{ENDPOINT}"]


def test_a_ready_endpoint_is_up_with_its_served_version(workspace):
    workspace.put_endpoint(ENDPOINT, "support_agent", "3")
    health = databricks().health()
    assert (health.environment, health.up, health.version, health.reason) == ("prod", True, 3, None)
    assert 0 < health.latency_ms < 5000
    assert {r["auth"] for r in workspace.requests} == {f"Bearer {TOKEN}"}  # unified auth from the environment


def test_an_endpoint_whose_update_failed_is_down_naming_its_state(workspace):
    workspace.put_endpoint(ENDPOINT, "support_agent", "3", ready="NOT_READY", config_update="UPDATE_FAILED")
    health = databricks().health()
    assert (health.up, health.version) == (False, 3)
    assert health.reason == f"endpoint {ENDPOINT} is NOT_READY (config update UPDATE_FAILED)"


@pytest.mark.timeout(60)  # the sdk's default retries would take 10 minutes
@pytest.mark.parametrize("given_client", [False, True], ids=["default client", "given client"])
def test_an_unreachable_workspace_is_down_quickly_and_says_why(workspace, given_client):
    workspace.put_endpoint(ENDPOINT, "support_agent", "3")
    # a client given to DatabricksServing keeps its own retry settings: this one gives up after a second
    client = WorkspaceClient(config=Config(retry_timeout_seconds=1, http_timeout_seconds=2)) if given_client else None
    workspace.__exit__()  # the workspace goes away: connections are refused
    started = time.monotonic()
    health = databricks(client).health(timeout_s=1)
    assert time.monotonic() - started < 10
    assert (health.up, health.version, health.latency_ms) == (False, None, None)
    assert health.reason.startswith(f"cannot get endpoint {ENDPOINT}: ") and "Connection refused" in health.reason
    assert TOKEN not in health.reason
