"""Runs whose worker died are failed, their pool slots freed, their retries launched.

A run worker killed with SIGKILL (out of memory, a reboot, `kill -9`) never reports its own end: the run stays
STARTED and keeps its `duckdb_write` slot, so every later writer waits forever. Dagster's run monitoring (on in the
instance settings, `resources/settings.py`) fails such runs, but only if the run launcher can tell whether a
run's worker is alive, which Dagster's default launcher cannot. `LocalRunLauncher` can:
- a run launched by the daemon or the UI is alive while its code server still lists it as running;
- a run the `llmops` CLI executes in its own process carries the process's identity (`WORKER_TAG`), checked here.
The CLI also fails dead runs itself before it runs a job (`fail_dead_runs`), so no daemon is needed for that.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.tags import GRPC_INFO_TAG

from assets.vocabulary import WORKER_TAG  # "host:pid:start time": the start time tells a reused pid apart



def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def this_worker() -> dict[str, str]:
    """The tag that lets run monitoring check on a run executed in this process."""
    return {WORKER_TAG: f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"}


def worker_health(run: dg.DagsterRun, current_runs: list[str] | None) -> WorkerStatus:
    """RUNNING, FAILED (its worker is gone) or UNKNOWN (it cannot be told from here: leave the run alone).

    `current_runs`: what the run's code server lists as running, None if it was not asked or did not answer."""
    if worker := run.tags.get(WORKER_TAG):
        host, pid, started = worker.split(":")
        if host != socket.gethostname():
            return WorkerStatus.UNKNOWN
        return WorkerStatus.RUNNING if _start_time(int(pid)) == started else WorkerStatus.FAILED
    if current_runs is None:
        return WorkerStatus.UNKNOWN
    return WorkerStatus.RUNNING if run.run_id in current_runs else WorkerStatus.FAILED


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (runs in subprocesses of the code server) that answers run monitoring's
    health checks; set in the instance's dagster.yaml."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        status = worker_health(run, self._current_runs(run))
        if status == WorkerStatus.UNKNOWN:
            # Reported as running: run monitoring fails any run that is not, and an unreachable code server
            # (restarting, say) is no proof that the run died.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its worker cannot be checked from here")
        return CheckRunHealthResult(status, None if status == WorkerStatus.RUNNING else "its worker process is gone")

    def _current_runs(self, run: dg.DagsterRun) -> list[str] | None:
        from dagster._grpc.types import GetCurrentRunsResult
        from dagster._serdes import deserialize_value

        if GRPC_INFO_TAG not in run.tags:
            return None
        client = self._get_grpc_client_for_termination(run.run_id)
        try:
            return list(deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs)
        except Exception:  # noqa: BLE001 - any gRPC failure means "cannot tell"
            return None


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the runs executed by `llmops` processes of this machine that died, and free their pool slots; return
    their ids. Runs launched through the daemon are left to run monitoring."""
    dead = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        if WORKER_TAG in run.tags and worker_health(run, None) == WorkerStatus.FAILED:
            instance.report_run_failed(run, "Its worker process is gone (killed?): marked failed by llmops.")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            dead.append(run.run_id)
    return dead
