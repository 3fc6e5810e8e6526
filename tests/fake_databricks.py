"""Loopback HTTP servers speaking the Databricks REST calls the real client libraries make: Model Serving
(databricks-sdk: create, get, update config, and query, answered by loading the configured model version with
MLflow) and the Review App's labeling sessions (mlflow.genai.labeling through databricks-agents)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import mlflow

from tests.conftest import send_json


class LoopbackWorkspace:
    """A workspace on 127.0.0.1 that records every request (method, path, Authorization header, body) and
    answers through `route`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, method: str, path: str, query: dict[str, str], body: dict) -> tuple[int, dict]:
        raise NotImplementedError

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/.well-known/databricks-config":  # databricks-sdk's host discovery (no auth)
                    status, payload = 200, {"oidc_endpoint": f"{fake.url}/oidc", "workspace_id": "1"}
                else:
                    fake.requests.append({"method": method, "path": self.path, "body": body,
                                          "auth": self.headers.get("Authorization")})
                    status, payload = fake.route(method, url.path, query, body)
                send_json(self, status, payload)

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def do_PUT(self):  # noqa: N802
                self._route("PUT")

            def do_PATCH(self):  # noqa: N802
                self._route("PATCH")

            def do_DELETE(self):  # noqa: N802
                self._route("DELETE")

            def log_message(self, *args):
                pass

        return Handler


class FakeServingWorkspace(LoopbackWorkspace):
    """`mode`: "ok"; "never_ready" (every update stays IN_PROGRESS); "broken" (queries fail with 500)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.endpoints: dict[str, dict] = {}
        self._models: dict[tuple[str, str], object] = {}
        super().__init__()

    def served_version(self, name: str) -> str | None:
        endpoint = self.endpoints.get(name)
        return endpoint["config"]["served_entities"][0]["entity_version"] if endpoint else None

    def put_endpoint(self, name: str, model: str, version: str, ready: str = "READY",
                     config_update: str = "NOT_UPDATING") -> None:
        """An endpoint serving one version, in the state `ready` / `config_update` (as the REST API spells
        them), as if deployed earlier."""
        self.endpoints[name] = {"name": name, "state": {"ready": ready, "config_update": config_update},
                                "config": {"served_entities": [{"entity_name": model, "entity_version": version}]}}

    def _update(self, name: str, entities: list[dict]) -> dict:
        endpoint = self.endpoints.setdefault(name, {"name": name, "config": {"served_entities": []},
                                                    "state": {"ready": "NOT_READY"}})
        if self.mode == "never_ready":
            endpoint["pending_config"] = {"served_entities": entities}
            endpoint["state"]["config_update"] = "IN_PROGRESS"
        else:  # applied at once: the next get says ready
            endpoint["config"] = {"served_entities": entities}
            endpoint["state"] = {"ready": "READY", "config_update": "NOT_UPDATING"}
        return endpoint

    def _answer(self, name: str, body: dict) -> tuple[int, dict]:
        if self.mode == "broken":
            return 500, {"error_code": "INTERNAL_ERROR", "message": "model failed to load: ImportError"}
        entity = self.endpoints[name]["config"]["served_entities"][0]
        key = (entity["entity_name"], entity["entity_version"])
        if key not in self._models:
            self._models[key] = mlflow.pyfunc.load_model(f"models:/{key[0]}/{key[1]}")
        return 200, self._models[key].predict({"input": body["input"]})

    def route(self, method: str, path: str, query: dict[str, str], body: dict) -> tuple[int, dict]:
        if method == "POST" and path == "/api/2.0/serving-endpoints":
            return 200, self._update(body["name"], body["config"]["served_entities"])
        if match := re.fullmatch(r"/api/2.0/serving-endpoints/([^/]+)/config", path):
            return 200, self._update(match.group(1), body["served_entities"])
        if match := re.fullmatch(r"/api/2.0/serving-endpoints/([^/]+)", path):
            if match.group(1) not in self.endpoints:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint {match.group(1)} does not exist"}
            return 200, self.endpoints[match.group(1)]
        if match := re.fullmatch(r"/serving-endpoints/([^/]+)/invocations", path):
            return self._answer(match.group(1), body)
        return 404, {"error_code": "NOT_FOUND", "message": f"no route {method} {path}"}


class FakeReviewAppWorkspace(LoopbackWorkspace):
    """The Review App's REST calls (managed-evals review apps, labeling sessions and their items) plus the few
    MLflow and permissions calls around them. `fail_adds`: how many item batches to refuse with a 500 first."""

    def __init__(self, experiments: dict[str, str], fail_adds: int = 0):
        self.experiments = experiments  # id -> name
        self.fail_adds = fail_adds
        self.apps: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}  # session id -> REST labeling session (+ review_app_id)
        self.items: dict[str, list[dict]] = {}  # session id -> items
        self.runs: dict[str, dict] = {}
        self.linked: dict[str, set[str]] = {}  # run id -> traces linked to it
        self.trace_tags: dict[str, dict[str, str]] = {}
        super().__init__()

    def session_traces(self) -> dict[str, list[str]]:
        """Session name -> its traces (sorted), as a reviewer would see them."""
        return {s["name"]: sorted(i["source"]["trace_id"] for i in self.items[sid]) for sid, s in self.sessions.items()}

    def _run(self, experiment_id: str, name: str) -> str:
        run_id = uuid.uuid4().hex
        self.runs[run_id] = {"info": {"run_id": run_id, "run_uuid": run_id, "experiment_id": experiment_id,
                                      "run_name": name, "status": "RUNNING", "lifecycle_stage": "active",
                                      "start_time": int(datetime.now(timezone.utc).timestamp() * 1000)},
                             "data": {}}
        return run_id

    def route(self, method: str, path: str, query: dict[str, str], body: dict) -> tuple[int, dict]:
        prefix = "/api/2.0/managed-evals/review-apps"
        if path == "/api/2.0/mlflow/experiments/get":
            if (name := self.experiments.get(query["experiment_id"])) is None:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}
            return 200, {"experiment": {"experiment_id": query["experiment_id"], "name": name,
                                        "lifecycle_stage": "active"}}
        if path == "/api/2.0/mlflow/runs/get":
            return 200, {"run": self.runs[query["run_id"]]}
        if path == "/api/2.0/mlflow/traces/link-to-run":
            self.linked.setdefault(body["run_id"], set()).update(body["trace_ids"])
            return 200, {}
        if (match := re.fullmatch(r"/api/2.0/mlflow/traces/([^/]+)/tags", path)) and method == "PATCH":
            self.trace_tags.setdefault(match.group(1), {})[body["key"]] = body["value"]
            return 200, {}
        if path.startswith("/api/2.0/permissions/experiments/"):
            return 200, {"object_id": path.rsplit("/", 1)[1], "access_control_list": []}
        if path == prefix and method == "GET":
            experiment_id = query["filter"].removeprefix("experiment_id=")
            return 200, {"review_apps": [a for a in self.apps.values() if a["experiment_id"] == experiment_id]}
        if path == prefix and method == "POST":
            app = {**body, "review_app_id": uuid.uuid4().hex}
            self.apps[app["review_app_id"]] = app
            return 200, app
        if (match := re.fullmatch(prefix + r"/([^/]+)", path)) and method == "PATCH":
            app = self.apps[match.group(1)]
            for field in query["update_mask"].split(","):
                app[field] = body.get(field, [])
            return 200, app
        if match := re.fullmatch(prefix + r"/([^/]+)/labeling-sessions", path):
            app_id = match.group(1)
            if method == "GET":
                return 200, {"labeling_sessions": [s for s in self.sessions.values() if s["review_app_id"] == app_id]}
            session_id = uuid.uuid4().hex
            session = {**body, "labeling_session_id": session_id, "review_app_id": app_id,
                       "mlflow_run_id": self._run(self.apps[app_id]["experiment_id"], body["name"])}
            self.sessions[session_id], self.items[session_id] = session, []
            return 200, session
        if match := re.fullmatch(prefix + r"/[^/]+/labeling-sessions/([^/]+)/items", path):
            return 200, {"items": self.items[match.group(1)]}
        if match := re.fullmatch(prefix + r"/[^/]+/labeling-sessions/([^/]+)/items:batchCreate", path):
            if self.fail_adds:
                self.fail_adds -= 1
                return 500, {"error_code": "INTERNAL_ERROR", "message": "temporarily unavailable"}
            now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
            self.items[match.group(1)] += [{"item_id": uuid.uuid4().hex, "create_time": now, "state": "PENDING",
                                            "source": item["source"]} for item in body["items"]]
            return 200, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no route {method} {path}"}
