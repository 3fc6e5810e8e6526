"""Processes `llmops` starts: a port check before a server starts, and a child run as a process group that ends
with `llmops` (no webserver, daemon or code server left behind)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

GRACE_S = 20.0  # how long a stopped group may take to shut down cleanly before what is left of it is killed
POLL_S = 0.2
# Signals that stop `llmops`, and what its child's group is sent for each. A hang-up (the terminal closed) reaches
# only `llmops` now that the child has its own session; Dagster shuts down cleanly on SIGTERM, not on SIGHUP.
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}


class PortUnavailable(Exception):
    """A server could not listen on the host and port it was given."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise `PortUnavailable` if a server could not listen on `host`:`port` now. Binds as uvicorn does (with
    SO_REUSEADDR), so a port whose last connections are in TIME_WAIT counts as free, as it is for the server."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortUnavailable(f"port {port} on {host} is in use; pick another with --port") from None
            raise PortUnavailable(f"cannot listen on {host} port {port}: {error.strerror or error}") from None


def run_as_group(command: list[str], cwd: Path, grace_s: float = GRACE_S) -> int:
    """Run `command` as the leader of a new session and return the code to exit with: the child's own when it ends
    by itself, 128 + the signal's number when one of `FORWARDED` stops us. Either way its whole process group is
    stopped before this returns: sent the signal (SIGTERM if the child ended by itself), then after `grace_s` killed.
    """
    received: list[int] = []

    def record(signum: int, _frame) -> None:  # the loop below acts on it: no work inside a signal handler
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in FORWARDED}
    try:
        # Its own session: a terminal's Ctrl-C reaches `llmops` alone, which then stops the group, leaving nothing
        child = subprocess.Popen(command, cwd=cwd, start_new_session=True)
        while child.poll() is None and not received:
            time.sleep(POLL_S)
        stop_group(child, FORWARDED[received[0]] if received else signal.SIGTERM, grace_s)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 + received[0] if received else exit_code(child.returncode)


def stop_group(leader: subprocess.Popen, signum: int, grace_s: float) -> None:
    """Send `signum` to the process group `leader` leads, wait up to `grace_s` for every member to end, then
    SIGKILL the rest."""
    signal_group(leader.pid, signum)
    deadline = time.monotonic() + grace_s
    while group_exists(leader) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    signal_group(leader.pid, signal.SIGKILL)
    leader.wait()


def group_exists(leader: subprocess.Popen) -> bool:
    leader.poll()  # reaps the leader once it has ended, or its zombie would keep the group in existence
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return False
    return True


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
