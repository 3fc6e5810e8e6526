"""Fixtures: real MLflow SQLite stores written through MLflow's APIs, real DuckDB files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # feedback is logged right after each trace

import mlflow  # noqa: E402
import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import AssessmentSource, AssessmentSourceType  # noqa: E402
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: E402

from assets.traces.extract import extract_traces  # noqa: E402
from resources.agent.traffic import seed_demo  # noqa: E402
from resources.serving import Deployment, LocalServing, LocalTarget  # noqa: E402
from resources.trace_sources import SqlTrackingStore  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parent.parent
HOSTILE_TAGS = {
    "note": "it's a \"quoted\" value; DROP TABLE traces; --",
    "sql": "' OR 1=1 --",
    "multi line": "line one\nline two \\ backslash",
}


@dataclass
class Store:
    uri: str
    experiment_id: str
    trace_ids: list[str] = field(default_factory=list)
    path: Path | None = None  # the SQLite file, for tests that edit the store behind MLflow's back


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory) -> Store:
    """A demo store built once per session: 60 demo traces, hostile tags, an expectation with a JSON value."""
    path = tmp_path_factory.mktemp("seed") / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{path}")
    summary = seed_demo(60, experiment="llmops-demo", seed=11)
    first = summary.trace_ids[0]
    for key, value in HOSTILE_TAGS.items():
        mlflow.set_trace_tag(first, key, value)
    mlflow.log_expectation(
        trace_id=summary.trace_ids[1], name="expected_facts", value={"facts": ["kb-101", "hourly"], "n": 2},
        source=AssessmentSource(AssessmentSourceType.HUMAN, "expert-1"),
    )
    mlflow.log_expectation(trace_id=summary.trace_ids[2], name="expected_answer", value="Refresh from the menu.")
    return Store(f"sqlite:///{path}", summary.experiment_id, summary.trace_ids, path)


@pytest.fixture
def store(seeded_store: Store, tmp_path: Path) -> Store:
    """A private copy of the seeded store, set as the current tracking URI, for tests that change it."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(seeded_store.path, path)
    copy = Store(f"sqlite:///{path}", seeded_store.experiment_id, list(seeded_store.trace_ids), path)
    mlflow.set_tracking_uri(copy.uri)
    return copy


@pytest.fixture
def warehouse_path(tmp_path: Path) -> str:
    return str(tmp_path / "warehouse.duckdb")


@pytest.fixture(scope="session")
def warehouse(seeded_store: Store, tmp_path_factory) -> sa.Engine:
    """The seeded store extracted once into a DuckDB warehouse, opened read-only through SQLAlchemy."""
    path = tmp_path_factory.mktemp("insights") / "warehouse.duckdb"
    extract_traces(SqlTrackingStore(seeded_store.uri), str(path))
    engine = sa.create_engine(f"duckdb:///{path}", connect_args={"read_only": True})
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mlflow_store(seeded_store: Store, tmp_path_factory) -> SqlAlchemyStore:
    """MLflow's own store over the seeded database: the oracle for the insights numbers."""
    return SqlAlchemyStore(seeded_store.uri, str(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory) -> Path:
    """An MLflow SQLite store with MLflow's migrations applied, copied by each test (migrations take seconds)."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def empty_store(empty_store_file: Path, tmp_path: Path) -> Path:
    """This test's own copy of the empty store, at `tmp_path/mlflow.db`."""
    return Path(shutil.copyfile(empty_store_file, tmp_path / "mlflow.db"))


def post_status(url: str, body, timeout_s: float = 60) -> tuple[int, dict]:
    """POST `body` (JSON, or raw bytes) to `url`: the HTTP status and the JSON answer, errors included."""
    status, _, answer = http(url, body, timeout_s=timeout_s)
    return status, json.loads(answer)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


LLMOPS = [sys.executable, "-m", "orchestration.cli"]  # the `llmops` command, as a subprocess


def llmops_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of an `llmops` subprocess: this one's without the platform's, Dagster's and the tracking
    store's variables (the embedded defaults, as a user gets them), LLMOPS_HOME in `tmp_path`, then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOPS_", "DAGSTER_", "MLFLOW_TRACKING"))}
    return {**env, "LLMOPS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(PROJECT_DIR), **extra}


def send_json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
    """Answer a request of a loopback stand-in server (http.server) with `payload` as JSON."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, processes: list[subprocess.Popen], output: Callable[[], str],
                       timeout_s: float = 120) -> None:
    """Poll `url` until it answers; fail with the tail of `output()` if a process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                for process in processes:
                    process.kill()
                pytest.fail(f"{url} did not start: {output()[-3000:]}")
            time.sleep(0.3)


def http(url: str, body=None, headers: dict[str, str] | None = None,
         timeout_s: float = 60) -> tuple[int, dict[str, str], bytes]:
    """A request to `url`, a POST when `body` is given (JSON, or raw bytes): the status, the headers (lower-case
    names) and the raw answer, errors included."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@contextmanager
def mlflow_server(store: Store, port: int, folder: Path) -> Iterator[str]:
    """A real `mlflow server` over the store on 127.0.0.1:`port`."""
    log = folder / "mlflow-server.log"
    with open(log, "ab") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--default-artifact-root", str(folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=output,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner: 8 fewer processes
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", [server], log.read_text)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: leave no server behind, fail no test for it
            server.kill()
            server.wait(timeout=30)


@contextmanager
def llmops_serve(env: dict[str, str], log: Path | None = None) -> Iterator[str]:
    """`llmops serve` in its own process on a free 127.0.0.1 port, with `env` added, its output in the file `log`
    (a temporary one if not given); ready once /health answers (the one route open when a token is required)."""
    port = free_port()
    log = log or Path(tempfile.mkstemp(suffix=".log")[1])
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port)],
                                  cwd=PROJECT_DIR, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{url}/health", [server], log.read_text, timeout_s=60)
    try:
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:  # uvicorn waits for requests in flight; leave no server behind
            server.kill()
            raise


# A stand-in for `mlflow models serve`: its command line holds "serve" and the port as `_is_our_server` checks.
# MODE: an HTTP status to answer /ping with, "silent" (accepts connections, never answers) or "closed" (runs
# but listens on nothing). It prints "ready" once it listens.
FAKE_SERVE = """\
import socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

_, _, port, mode = sys.argv
if mode in ("silent", "closed"):
    if mode == "silent":
        listener = socket.create_server(("127.0.0.1", int(port)))
    print("ready", flush=True)
    time.sleep(600)


class Ping(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(int(mode) if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", int(port)), Ping)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def serve(tmp_path: Path):
    """Starts fake servers and records them in dev's state file as `LocalServing.deploy` does; kills them all."""
    script = tmp_path / "fake_serve.py"
    script.write_text(FAKE_SERVE)
    processes: list[subprocess.Popen] = []

    def start(mode: str, version: int = 4) -> tuple[LocalServing, subprocess.Popen]:
        port = free_port()
        process = subprocess.Popen([sys.executable, str(script), "serve", str(port), mode], stdout=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        processes.append(process)
        assert process.stdout.readline() == b"ready\n", f"the fake server exited with {process.wait()}"
        serving = LocalServing(tmp_path / "serving", "dev", LocalTarget(target="local"), {})
        deployment = Deployment("dev", version, f"http://127.0.0.1:{port}", 12.5, process.pid, None)
        serving._save({"active": asdict(deployment)})
        return serving, process

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
