"""Deployment targets for the agent model: local `mlflow models serve` processes and Databricks Model Serving.

One interface: `deploy(version, model_uri)` starts serving the version, smoke-tests it with the model's input
example, and only then retires what served before; if anything fails, what served before keeps serving and a
`DeployError` says why. The environments (dev, prod, ...) and their settings come from a YAML file.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class DeployError(RuntimeError):
    """A deployment did not go live; what served before still serves."""


class LocalTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Literal["local"]
    host: str = "127.0.0.1"
    startup_timeout_s: float = Field(default=180, gt=0)


class DatabricksTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Literal["databricks"]
    endpoint_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    workload_size: Literal["Small", "Medium", "Large"] = "Small"
    scale_to_zero: bool = True
    min_scale: int | None = Field(default=None, ge=0)
    max_scale: int | None = Field(default=None, ge=1)
    ready_timeout_s: float = Field(default=1200, gt=0)


Target = Annotated[LocalTarget | DatabricksTarget, Field(discriminator="target")]


def load_environments(path: Path) -> dict[str, LocalTarget | DatabricksTarget]:
    """The deployment environments of a YAML file; a bad file is an error naming the file and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return TypeAdapter(dict[str, Target]).validate_python(data)
    except FileNotFoundError:
        raise DeployError(f"deployment config {path} not found (set LLMOPS_DEPLOY_CONFIG)") from None
    except yaml.YAMLError as exc:
        raise DeployError(f"{path}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DeployError(f"{path}: {problems}") from None


@dataclass
class Deployment:
    """What serves an environment now."""

    environment: str
    version: int
    url: str
    smoke_latency_ms: float
    pid: int | None = None  # local servers only
    log: str | None = None


@dataclass(frozen=True)
class Health:
    """One health probe of what serves an environment, for alerting."""

    environment: str
    up: bool
    version: int | None  # the model version serving, as the state file or the endpoint's served entity says
    latency_ms: float | None  # of the probe, when it got an answer
    reason: str | None  # why it is down, in plain words; None when up. Never holds a secret.


# --- local -------------------------------------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _is_our_server(pid: int, port: int) -> bool:
    """True when `pid` is alive (not a zombie waiting to be reaped) and is an `mlflow models serve` on `port`
    (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"serve" in cmdline and str(port).encode() in cmdline


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _stop(pid: int, port: int, timeout_s: float = 15.0) -> None:
    """Stop the server's whole process group (MLflow execs uvicorn workers under it)."""
    if not _is_our_server(pid, port):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
            except ChildProcessError:
                pass
            if not _is_our_server(pid, port):
                return
            time.sleep(0.1)


def post_json(url: str, payload: Any, timeout_s: float = 60.0) -> tuple[Any, float]:
    """POST JSON; returns the decoded answer and the latency in ms. HTTP errors carry the server's message."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise DeployError(f"{url} answered {exc.code}: {exc.read().decode(errors='replace')[:1000]}") from None
    return body, (time.perf_counter() - started) * 1000


EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|NotFound|Failure)\b: .+$", re.MULTILINE)


def _errors_in(log_path: Path) -> str:
    """The last distinct exception lines of a server log: the cause, without MLflow's report that the uvicorn
    command it ran failed."""
    lines = [line for line in EXCEPTION_LINE.findall(log_path.read_text(errors="replace"))
             if "returned non zero return code" not in line]
    return "; ".join(list(dict.fromkeys(lines))[-2:]) or "no exception in its log"


class LocalServing:
    """`mlflow models serve --env-manager local` processes, one serving each environment.

    A state file per environment (`<state_dir>/<environment>.json`) records the serving process and the one being
    started, so a run that died half-way leaves no orphan: the next deployment stops it first. Each deployment
    starts on a fresh port (never two servers on one port) and the old server stops only after the new one passed
    its smoke test; the URL is in the state file and the asset's metadata.
    """

    def __init__(self, state_dir: Path, environment: str, settings: LocalTarget, env: dict[str, str]):
        self.state_path = Path(state_dir) / f"{environment}.json"
        self.environment, self.settings, self.env = environment, settings, env

    def _state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _save(self, state: dict) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)  # atomic: a crash never leaves half a state file

    def current(self) -> Deployment | None:
        """What serves the environment now, if its server is alive."""
        active = self._state().get("active")
        if active and _is_our_server(active["pid"], _port(active["url"])):
            return Deployment(**active)
        return None

    def health(self, timeout_s: float = 5.0) -> Health | None:
        """GET /ping of the active server (MLflow's scoring server answers 200). None when nothing was ever
        deployed to the environment: that is not an outage, there is nothing to ping."""
        active = self._state().get("active")
        if not active:
            return None

        def down(reason: str) -> Health:
            return Health(self.environment, False, active["version"], None, reason)

        if not _is_our_server(active["pid"], _port(active["url"])):  # first: another process may have the port
            return down(f"the server (pid {active['pid']}) is not running")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{active['url']}/ping", timeout=timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            return down(f"/ping answered {exc.code}")
        except (OSError, http.client.HTTPException) as exc:
            # urlopen wraps connection errors in URLError; a timeout while reading the answer comes bare
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(cause, TimeoutError):
                return down(f"no answer on /ping within {timeout_s:g} s")
            if isinstance(cause, ConnectionRefusedError):
                return down("connection refused")
            return down(f"/ping failed: {cause}")
        if status != 200:
            return down(f"/ping answered {status}")
        return Health(self.environment, True, active["version"], round((time.perf_counter() - started) * 1000, 1),
                      None)

    def _stop_pending(self, state: dict) -> None:
        if pending := state.pop("pending", None):
            _stop(pending["pid"], pending["port"])
            self._save(state)

    def deploy(self, version: int, model_name: str, input_example: Any) -> Deployment:
        model_uri = f"models:/{model_name}/{version}"
        state = self._state()
        self._stop_pending(state)  # left by a run that died while starting a server
        host, port = self.settings.host, _free_port(self.settings.host)
        log_path = self.state_path.parent / f"{self.environment}-v{version}-{port}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The venv's bin first: MLflow execs `uvicorn` by name. An inherited MLFLOW_EXPERIMENT_ID (mlflow.set_experiment
        # exports it) would beat the MLFLOW_EXPERIMENT_NAME the deployment gives, and the traces land elsewhere; the
        # MLFLOW_CONFIGURE_LOGGING=false an llmops command runs its job with would leave the server's log without
        # MLflow's lines.
        inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_CONFIGURE_LOGGING")}
        env = {**inherited, **self.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h", host, "-p", str(port),
                 "--env-manager", "local"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        state["pending"] = {"pid": process.pid, "port": port}
        self._save(state)
        url = f"http://{host}:{port}"
        try:
            self._wait_ready(process, url, log_path)
            _, latency = post_json(f"{url}/invocations", input_example)
        except Exception as exc:
            _stop(process.pid, port)
            state.pop("pending", None)
            self._save(state)
            raise DeployError(f"version {version} did not go live on {url}: {exc}") from None
        previous = state.get("active")
        deployment = Deployment(self.environment, version, url, round(latency, 1), process.pid, str(log_path))
        state.update(active=asdict(deployment))
        state.pop("pending", None)
        self._save(state)
        if previous and previous["pid"] != process.pid:
            _stop(previous["pid"], _port(previous["url"]))
        return deployment

    def _wait_ready(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            if process.poll() is not None:
                raise DeployError(f"the server exited with code {process.returncode}: {_errors_in(log_path)} "
                                  f"(full log: {log_path})")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise DeployError(f"no answer on /ping within {self.settings.startup_timeout_s:g} s") from None
                time.sleep(0.25)

    def stop(self) -> None:
        state = self._state()
        self._stop_pending(state)
        if active := state.pop("active", None):
            _stop(active["pid"], _port(active["url"]))
        self._save(state)


# --- Databricks -----------------------------------------------------------------------------------------------------


class DatabricksServing:
    """A Databricks Model Serving endpoint, through databricks-sdk with unified auth (environment variables,
    a config profile or a cloud identity); this code never sees a token."""

    def __init__(self, environment: str, settings: DatabricksTarget, workspace_client=None):
        self.environment, self.settings = environment, settings
        self._client = workspace_client
        self._given_client = workspace_client is not None

    def _workspace(self):
        if self._client is None:
            from databricks.sdk import WorkspaceClient

            self._client = WorkspaceClient()
        return self._client

    def _served_entity(self, model_name: str, version: int):
        from databricks.sdk.service.serving import ServedEntityInput

        s = self.settings
        return ServedEntityInput(
            entity_name=model_name, entity_version=str(version), workload_size=s.workload_size,
            scale_to_zero_enabled=s.scale_to_zero, min_provisioned_concurrency=s.min_scale,
            max_provisioned_concurrency=s.max_scale,
        )

    def _url(self) -> str:
        return f"{self._workspace().config.host.rstrip('/')}/serving-endpoints/{self.settings.endpoint_name}/invocations"

    def current(self) -> Deployment | None:
        """What the endpoint serves now, if it exists, is ready and serves one registered version."""
        from databricks.sdk.errors import NotFound
        from databricks.sdk.service.serving import EndpointStateReady

        try:
            endpoint = self._workspace().serving_endpoints.get(self.settings.endpoint_name)
        except NotFound:
            return None
        entities = (endpoint.config.served_entities or []) if endpoint.config else []
        if endpoint.state.ready != EndpointStateReady.READY or len(entities) != 1 or not entities[0].entity_version:
            return None
        return Deployment(self.environment, int(entities[0].entity_version), self._url(), 0.0)

    def _probe_workspace(self, timeout_s: float):
        """The client of a health probe. The default client retries an unreachable workspace for 5 minutes (and
        already when it is built, fetching the host's metadata); a probe makes one attempt of at most `timeout_s`.
        A client given to the constructor is used as it is configured."""
        if self._given_client:
            return self._client
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        return WorkspaceClient(config=Config(retry_timeout_seconds=1, http_timeout_seconds=timeout_s))

    def health(self, timeout_s: float = 5.0) -> Health | None:
        """The endpoint's state as the workspace reports it; None when the endpoint does not exist (nothing was
        ever deployed: not an outage). Latency is that of the `get` call."""
        from databricks.sdk.errors import NotFound
        from databricks.sdk.service.serving import EndpointStateReady

        name = self.settings.endpoint_name
        try:
            started = time.perf_counter()
            endpoint = self._probe_workspace(timeout_s).serving_endpoints.get(name)
            latency = round((time.perf_counter() - started) * 1000, 1)
        except NotFound:
            return None
        except Exception as exc:  # unreachable workspace, auth, throttling: the sdk's messages hold no token
            reason = f"{type(exc).__name__}: {exc}"
            if exc.__cause__ is not None:  # the sdk's "Timed out after 0:00:01" hides why it gave up
                reason += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
            return Health(self.environment, False, None, None, f"cannot get endpoint {name}: {reason}")
        entities = (endpoint.config.served_entities or []) if endpoint.config else []
        served = entities[0].entity_version if len(entities) == 1 else None
        version = int(served) if served and served.isdigit() else None
        state = endpoint.state
        if state is not None and state.ready == EndpointStateReady.READY:
            return Health(self.environment, True, version, latency, None)
        ready = state.ready.value if state is not None and state.ready else "in no reported state"
        update = f" (config update {state.config_update.value})" if state is not None and state.config_update else ""
        return Health(self.environment, False, version, latency, f"endpoint {name} is {ready}{update}")

    def deploy(self, version: int, model_name: str, input_example: Any) -> Deployment:
        from databricks.sdk.errors import NotFound
        from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput

        endpoints, name = self._workspace().serving_endpoints, self.settings.endpoint_name
        entity = self._served_entity(model_name, version)
        try:
            before = [ServedEntityInput(entity_name=e.entity_name, entity_version=e.entity_version,
                                        workload_size=e.workload_size, scale_to_zero_enabled=e.scale_to_zero_enabled)
                      for e in (endpoints.get(name).config.served_entities or [])]
            endpoints.update_config(name, served_entities=[entity])
        except NotFound:
            before = []
            endpoints.create(name, config=EndpointCoreConfigInput(name=name, served_entities=[entity]))
        self._wait(name, f"version {version}")
        started = time.perf_counter()
        try:
            endpoints.query(name, input=input_example["input"])
        except Exception as exc:
            if before:  # put back what served before, so a broken version does not keep serving
                endpoints.update_config(name, served_entities=before)
                self._wait(name, "the previous configuration")
            raise DeployError(f"endpoint {name} failed its smoke test with version {version}: {exc}") from None
        return Deployment(self.environment, version, self._url(), round((time.perf_counter() - started) * 1000, 1))

    def _wait(self, name: str, what: str):
        from databricks.sdk.errors import OperationFailed
        from databricks.sdk.service.serving import EndpointStateReady

        try:
            endpoint = self._workspace().serving_endpoints.wait_get_serving_endpoint_not_updating(
                name, timeout=timedelta(seconds=self.settings.ready_timeout_s))
        except TimeoutError:
            raise DeployError(f"endpoint {name} did not finish updating to {what} within "
                              f"{self.settings.ready_timeout_s:g} s; it keeps serving its previous configuration") from None
        except OperationFailed as exc:
            raise DeployError(f"endpoint {name} rejected {what}: {exc}") from None
        if endpoint.state.ready != EndpointStateReady.READY:
            raise DeployError(f"endpoint {name} is {endpoint.state.ready.value} after updating to {what}")
        return endpoint
