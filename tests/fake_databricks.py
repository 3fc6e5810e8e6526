"""A loopback HTTP server speaking the Databricks Model Serving REST calls databricks-sdk makes for a deployment:
create, get, update config, and query (answered by loading the configured model version with MLflow)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow


class FakeServingWorkspace:
    """`mode`: "ok"; "never_ready" (every update stays IN_PROGRESS); "broken" (queries fail with 500)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.endpoints: dict[str, dict] = {}
        self.requests: list[dict] = []  # method, path, Authorization header, body
        self._models: dict[tuple[str, str], object] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeServingWorkspace:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def served_version(self, name: str) -> str | None:
        endpoint = self.endpoints.get(name)
        return endpoint["config"]["served_entities"][0]["entity_version"] if endpoint else None

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

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                fake.requests.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization"),
                                      "body": body})
                if method == "POST" and self.path == "/api/2.0/serving-endpoints":
                    return self._send(200, fake._update(body["name"], body["config"]["served_entities"]))
                if match := re.fullmatch(r"/api/2.0/serving-endpoints/([^/]+)/config", self.path):
                    return self._send(200, fake._update(match.group(1), body["served_entities"]))
                if match := re.fullmatch(r"/api/2.0/serving-endpoints/([^/]+)", self.path):
                    if match.group(1) not in fake.endpoints:
                        return self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                                "message": f"Endpoint {match.group(1)} does not exist"})
                    return self._send(200, fake.endpoints[match.group(1)])
                if match := re.fullmatch(r"/serving-endpoints/([^/]+)/invocations", self.path):
                    return self._send(*fake._answer(match.group(1), body))
                self._send(404, {"error_code": "NOT_FOUND", "message": f"no route {method} {self.path}"})

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._route("GET")

            def do_POST(self):  # noqa: N802
                self._route("POST")

            def do_PUT(self):  # noqa: N802
                self._route("PUT")

            def log_message(self, *args):
                pass

        return Handler
