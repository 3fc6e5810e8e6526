"""`llmops ui` and `llmops serve` run as a user runs them: on a port that is taken, and stopped by a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import LLMOPS, PROJECT_DIR, free_port, llmops_env, wait_until_serving


def processes_of(home: Path) -> list[int]:
    """The live processes whose environment has LLMOPS_HOME=`home`: all an `llmops` command started, found even
    once their parent is gone (a zombie's environment reads empty)."""
    marker = f"LLMOPS_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile, or not ours
            pass
    return found


@contextmanager
def llmops(args: list[str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    """`llmops args` with LLMOPS_HOME=`tmp_path`/home, its output in `tmp_path`/llmops.log; on exit every process of
    that home is killed."""
    env = llmops_env(tmp_path, LLMOPS_AUTOMATION="off")  # no runs started by sensors: a quicker start and stop
    with open(tmp_path / "llmops.log", "wb") as output:
        process = subprocess.Popen([*LLMOPS, *args], cwd=PROJECT_DIR, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        for pid in processes_of(Path(env["LLMOPS_HOME"])):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A 127.0.0.1 port another server listens on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize(("command", "started_line"), [("ui", "Serving"), ("serve", "Insights API on")])
def test_a_taken_port_fails_at_once_and_says_so(command: str, started_line: str, taken_port: int, tmp_path: Path):
    log = tmp_path / "llmops.log"
    with llmops([command, "--port", str(taken_port)], tmp_path) as process:
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`llmops {command}` still runs on a taken port: {log.read_text()[-2000:]}")
    output = log.read_text()
    assert code != 0
    assert f"Error: port {taken_port} on 127.0.0.1 is in use; pick another with --port" in output, output
    assert started_line not in output


# `dagster dev` takes a minute (2-3 on a loaded machine) to start and stop: CI stops it once, with SIGTERM
@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=lambda stop: stop.name)
def test_stopping_the_ui_stops_every_process_it_started(stop: signal.Signals, tmp_path: Path):
    home, log, port = tmp_path / "home", tmp_path / "llmops.log", free_port()  # the home and log of `llmops`
    with llmops(["ui", "--port", str(port)], tmp_path) as ui:
        wait_until_serving(f"http://127.0.0.1:{port}/server_info", [ui], log.read_text, timeout_s=300)
        started = set(processes_of(home)) - {ui.pid}
        assert len(started) >= 3, f"dagster dev, its webserver and daemon: {started}"  # and code servers

        ui.send_signal(stop)
        assert ui.wait(timeout=60) == 128 + stop
        deadline = time.monotonic() + 30
        while (left := started & set(processes_of(home))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left behind: {left}\n{log.read_text()[-3000:]}"
