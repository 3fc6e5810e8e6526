"""An unreachable MLflow server fails `llmops extract` within a minute, each retry logged, the password masked;
a server that comes back within the retry budget is read."""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assets.traces.extract import extract_traces
from resources.trace_sources import SourceError, source_for
from tests.conftest import LLMOPS, PROJECT_DIR, free_port, llmops_env, send_json


def _logged_at(log: str, event: str) -> datetime:
    line = next(line for line in log.splitlines() if f" - trace_warehouse - {event} - " in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_extract_from_an_unreachable_server_fails_within_a_minute_saying_why(tmp_path: Path):
    port, home = free_port(), tmp_path / "home"
    env = llmops_env(tmp_path, MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{port}")
    run = subprocess.run([*LLMOPS, "extract"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    printed = run.stdout + run.stderr
    assert run.returncode == 1
    unreachable = f"MLflow at http://user:***@127.0.0.1:{port} unreachable (connection refused)"
    assert f"{unreachable}; gave up after" in printed.strip().splitlines()[-2]  # the reason, then the log's path
    assert re.search(rf"  ! trace_warehouse: {re.escape(unreachable)}; retry 1/\d+ in 2 s", printed), printed
    assert f"{unreachable}; retry 2/" in printed  # each retry shown as it happens, not only in the log
    log = next(home.rglob("warehouse_refresh-*.log")).read_text()
    assert "secret" not in printed + log and "Traceback" not in printed
    # The step gives up within a minute (251 s before); the command's start-up is issue 17's.
    assert (_logged_at(log, "STEP_FAILURE") - _logged_at(log, "STEP_START")).total_seconds() < 60


def mlflow_stand_in(port: int, statuses: list[int]) -> ThreadingHTTPServer:
    """A real HTTP server on 127.0.0.1:`port` answering MLflow's client with `statuses` in turn (the last one from then
    on): 200 as a store without experiments, others with MLflow's error JSON."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            send_json(self, status, {} if status == 200 else {"error_code": "PERMISSION_DENIED", "message": "not yours"})

        do_POST = do_GET

        def log_message(self, *args):  # not on the test's output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_server_that_starts_answering_during_the_retries_is_read(warehouse_path: str):
    port, logged, servers = free_port(), [], []
    opening = threading.Timer(3, lambda: servers.append(mlflow_stand_in(port, [200])))  # after the 2 s retry
    opening.start()
    try:
        result = extract_traces(source_for(f"http://127.0.0.1:{port}", progress=logged.append), warehouse_path)
    finally:
        opening.join()
        servers[0].shutdown()
    assert result.source_traces == 0
    assert logged[0] == f"MLflow at http://127.0.0.1:{port} unreachable (connection refused); retry 1/4 in 2 s"


def test_busy_answers_are_retried_and_a_refusal_is_final(warehouse_path: str):
    server = mlflow_stand_in(free_port(), [503, 503, 403])
    uri, logged = f"http://admin:s3cret@127.0.0.1:{server.server_port}", []
    try:
        with pytest.raises(SourceError) as failure:
            extract_traces(source_for(uri, progress=logged.append), warehouse_path)
    finally:
        server.shutdown()
    masked = f"http://admin:***@127.0.0.1:{server.server_port}"
    assert [m.split("; ")[1] for m in logged] == ["retry 1/4 in 2 s", "retry 2/4 in 4 s"]
    assert logged[0].startswith(f"MLflow at {masked} unreachable (too many 503 error responses)")
    assert str(failure.value).startswith(f"MLflow at {masked} refused the call: PERMISSION_DENIED: not yours")
    assert "s3cret" not in str(failure.value) + "".join(logged)
