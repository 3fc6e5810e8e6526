"""A run whose worker is SIGKILLed is failed, its pool slot freed and its retry launched: with dagster-daemon
(runs launched from the UI, schedules and sensors) and without it (runs of the `llmops` CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from orchestration.run_monitoring import WORKER_TAG, fail_dead_runs
from resources.settings import ensure_dagster_home

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.5)
    return value


@pytest.fixture
def instance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A DAGSTER_HOME with the platform's own dagster.yaml (its monitoring poll shortened for the test)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    config = ensure_dagster_home() / "dagster.yaml"
    config.write_text(config.read_text().replace("poll_interval_seconds: 15", "poll_interval_seconds: 2"))
    dg.DagsterInstance.get().get_runs(limit=1)  # creates its storage now: new processes would race to create it
    (tmp_path / "markers").mkdir()
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: tests.run_kill_defs\n"
        f"      working_directory: {PROJECT_DIR}\n      location_name: kill\n")
    yield {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster"), "PYTHONPATH": str(PROJECT_DIR),
           "LLMOPS_TEST_MARKERS": str(tmp_path / "markers"), "WORKSPACE": str(tmp_path / "workspace.yaml")}


def _runs(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name=job))]


def test_the_daemon_fails_a_killed_run_frees_its_slot_and_retries_it(instance_home: dict[str, str]):
    markers = Path(instance_home["LLMOPS_TEST_MARKERS"])
    workspace = instance_home["WORKSPACE"]
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", workspace], cwd=PROJECT_DIR,
                              env=instance_home, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def launch(job: str) -> None:
            done = subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", workspace, "-j", job],
                                  cwd=PROJECT_DIR, env=instance_home, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]

        launch("hold_job")
        worker = int(wait_for(lambda: (markers / "first").exists() and (markers / "first").read_text(), 180,
                              "the first run to take the pool"))
        launch("next_job")
        time.sleep(5)
        assert not (markers / "next").exists()  # the pool's one slot is taken
        os.kill(worker, signal.SIGKILL)

        instance = dg.DagsterInstance.get()
        wait_for(lambda: (markers / "next").exists(), 120, "the next writer to get the slot of the killed run")
        (killed,) = [r for r in _runs(instance, "hold_job") if "dagster/parent_run_id" not in r.tags]
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        retry = wait_for(lambda: next((r for r in _runs(instance, "hold_job")
                                       if r.tags.get("dagster/parent_run_id") == killed.run_id
                                       and r.status == dg.DagsterRunStatus.SUCCESS), None), 120, "the retry")
        assert (markers / "retry").exists() and retry.run_id != killed.run_id
        (following,) = _runs(instance, "next_job")
        assert following.status == dg.DagsterRunStatus.SUCCESS
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)


HOLD_IN_PROCESS = """
import dagster as dg
from orchestration.run_monitoring import this_worker
from tests.run_kill_defs import defs
defs.resolve_job_def("hold_job").execute_in_process(instance=dg.DagsterInstance.get(), tags=this_worker())
"""


def test_a_killed_cli_run_is_failed_and_its_slot_freed_without_a_daemon(instance_home: dict[str, str]):
    """What `llmops extract` does before it runs: fail the runs of dead llmops processes (pid and start time)."""
    markers = Path(instance_home["LLMOPS_TEST_MARKERS"])
    proc = subprocess.Popen([sys.executable, "-c", HOLD_IN_PROCESS], cwd=PROJECT_DIR, env=instance_home)
    wait_for(lambda: (markers / "first").exists(), 120, "the run to take the pool")
    instance = dg.DagsterInstance.get()
    (run,) = _runs(instance, "hold_job")
    assert fail_dead_runs(instance) == []  # alive: left alone
    assert instance.event_log_storage.get_concurrency_info("duckdb_write").claimed_slots
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # nobody noticed
    assert fail_dead_runs(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info("duckdb_write").claimed_slots
    assert WORKER_TAG in run.tags


def test_an_instance_written_by_an_earlier_version_gets_run_monitoring(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    from orchestration.run_monitoring import LocalRunLauncher

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "ours"))
    (tmp_path / "ours").mkdir()
    earlier = "# Written by llmops-platform. Runs that write the DuckDB warehouse share the pool `duckdb_write`.\n" \
              "concurrency:\n  pools:\n    default_limit: 1\n"
    (tmp_path / "ours" / "dagster.yaml").write_text(earlier)
    ensure_dagster_home()
    assert (tmp_path / "ours" / "dagster.yaml").read_text().startswith(earlier)
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_launcher, LocalRunLauncher) and instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 5
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "theirs"))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # the user's own file
    ensure_dagster_home()
    assert (tmp_path / "theirs" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
