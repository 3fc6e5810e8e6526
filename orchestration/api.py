"""The insights REST API (POST JSON under /api/3.0/mlflow/traces/insights/), MLflow's own trace-analytics routes
(`POST /api/3.0/mlflow/traces/metrics` and `/calculate-filter-correlation`, MLflow's messages in and out, so
MLflow's clients call them unchanged) and the feedback API (`POST /api/feedback`), served by `llmops serve`.

Each request attaches the warehouse read-only for its own duration (waiting while an extract holds the write
lock), so the server never blocks the Dagster runs that write the file. Errors use MLflow's error JSON
(`error_code`, `message` of at most MAX_MESSAGE characters): INVALID_PARAMETER_VALUE → 400 (413 for a body over
MAX_BODY_BYTES), UNAUTHENTICATED → 401, PERMISSION_DENIED → 403, RESOURCE_NOT_FOUND, RESOURCE_DOES_NOT_EXIST (the
MLflow routes) and ENDPOINT_NOT_FOUND → 404,
TEMPORARILY_UNAVAILABLE → 503 with Retry-After.

`GET /report` answers the HTML insights report the `insights_report` asset last rendered (404 before the first).
`GET /api/alerts/incidents` lists the alert incidents (`?state=open|resolved|all`, default open; `experiment_id`,
repeatable; `limit` 1..1000, default 100), newest first, with their root causes and notifications' state.

With a token configured, every route but `GET /health` (the OpenAPI page and the report too) needs
`Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import duckdb
import sqlalchemy as sa
from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import CalculateTraceFilterCorrelation, QueryTraceMetrics
from mlflow.utils.proto_json_utils import message_to_json
from starlette.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from assets.alerts.listing import IncidentsResponse, list_incidents
from assets.insights import breakdowns, dimensions, queries, trace_metrics
from assets.insights.npmi import DimensionError
from assets.insights.queries import InsightsQuery, known_experiments
from assets.insights.report import REPORT_FILE
from assets.labeling.feedback import FeedbackError, FeedbackLinker, FeedbackRequest, FeedbackResponse
from assets.yaml_files import InvalidFilesError
from resources.settings import LLMOPS_API_TOKEN, LLMOPS_API_TOKENS
from resources.warehouse import WarehouseOutdated, attached_engine, check_current

PREFIX = "/api/3.0/mlflow/traces/insights"
MLFLOW_PREFIX = "/api/3.0/mlflow/traces"  # MLflow's own trace-analytics routes
MAX_BODY_BYTES = 1_000_000
DRAIN_BYTES = 16_000_000  # a larger body is refused unread
MAX_MESSAGE = 1_000  # characters of an error message
ECHO = 100  # characters of one input value quoted in a message
MAX_INT = 2**53
RETRY_AFTER_S = 10
CALLER = "llmops.caller"  # scope key: the authenticated client's name (per-client tokens only)
CLIENT_NAME = re.compile(r"[\w.@-]+")
TOKEN = re.compile(r"[!-~]+")  # what an Authorization header carries: printable ASCII, no spaces
SURROGATE = re.compile("[\ud800-\udfff]")  # valid in a Python str and in JSON's escapes, not in UTF-8
STATUS = {"INVALID_PARAMETER_VALUE": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "RESOURCE_NOT_FOUND": 404,
          "RESOURCE_DOES_NOT_EXIST": 404,
          "ENDPOINT_NOT_FOUND": 404, "INTERNAL_ERROR": 500, "TEMPORARILY_UNAVAILABLE": 503}
log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer in MLflow's error JSON; the HTTP status follows from the error code unless given."""

    def __init__(self, error_code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.error_code, self.message, self.status = error_code, message, status or STATUS[error_code]


def not_found(message: str) -> ApiError:
    return ApiError("RESOURCE_NOT_FOUND", message)


def invalid(message: str) -> ApiError:
    return ApiError("INVALID_PARAMETER_VALUE", message)


def shown(text: str, limit: int = ECHO) -> str:
    """`text` cut to `limit` characters and with lone surrogates escaped: input quoted in an answer stays small and
    encodable."""
    text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def api_error(exc: Exception) -> ApiError:
    """Every failure as an ApiError: the one place exceptions get their error code."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, FeedbackError):
        return ApiError(exc.error_code, str(exc))
    if isinstance(exc, DimensionError):
        return invalid(str(exc))
    if isinstance(exc, InvalidFilesError):  # the server's own files (the outcomes file): the operator's to fix
        log.error("%s", exc)
        return ApiError("INTERNAL_ERROR", f"The server's configuration is invalid: {exc}")
    if isinstance(exc, MlflowException):  # the MLflow-compatible routes answer with MLflow's own codes
        return ApiError(exc.error_code, exc.message, exc.get_http_status_code())
    if isinstance(exc, RequestValidationError):
        return invalid("; ".join(
            f"{'.'.join(str(part) for part in error['loc'] if part != 'body') or 'body'}: {error['msg']}"
            for error in exc.errors()
        ))
    cause = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's errors
    if isinstance(cause, WarehouseOutdated):
        return ApiError("TEMPORARILY_UNAVAILABLE", str(cause))
    if isinstance(cause, duckdb.IOException) and "lock" in str(cause).lower():
        return ApiError("TEMPORARILY_UNAVAILABLE", "The warehouse is being written and stayed locked: retry.")
    if isinstance(exc, HTTPException):  # no such route or method, a body FastAPI could not read
        code = "ENDPOINT_NOT_FOUND" if exc.status_code in (404, 405) else "INVALID_PARAMETER_VALUE"
        return ApiError(code, str(exc.detail), exc.status_code)
    log.exception("request failed")
    return ApiError("INTERNAL_ERROR", f"{type(exc).__name__}: see the server log")


def mlflow_request(body: bytes, message: Message, required: tuple[str, ...]) -> Message:
    """`body` read into MLflow's request `message` as MLflow's server does; a missing or malformed field is
    INVALID_PARAMETER_VALUE with MLflow's wording."""
    fields = json.loads(body or b"{}")
    if not isinstance(fields, dict):
        raise invalid("The request body must be a JSON object.")
    for name in required:
        if fields.get(name) in (None, "", []):
            raise invalid(f"Missing value for required parameter '{name}'. See the API docs for more information "
                          "about request parameters.")
    try:
        # Strict, unlike MLflow's server: an unknown field or enum name (`"view_type": "TRACE"`) is an error,
        # not silently the default.
        ParseDict(fields, message)
    except ParseError as error:
        raise invalid(f"Invalid request: {shown(str(error), 300)}") from None
    return message


def error_response(error: ApiError) -> JSONResponse:
    message = shown(error.message, MAX_MESSAGE)
    if error.status == 503:
        log.warning("answered 503: %s", message)  # the tracking store or the warehouse is down: worth an operator's look
    headers = ({"Retry-After": str(RETRY_AFTER_S)} if error.status == 503
               else {"WWW-Authenticate": "Bearer"} if error.status == 401 else None)
    return JSONResponse({"error_code": error.error_code, "message": message}, status_code=error.status,
                        headers=headers)


def is_loopback(host: str) -> bool:
    """Whether `llmops serve --host` is reachable from this machine only: localhost, 127.0.0.0/8 or ::1."""
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_client_tokens(text: str) -> dict[str, str]:
    """LLMOPS_API_TOKENS (`alice=tok1,bob=tok2`) as {client name: token}. Errors name an entry by its position or
    client name, never by its token."""
    clients: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",") if e.strip()), 1):
        name, _, token = (part.strip() for part in entry.partition("="))
        if not CLIENT_NAME.fullmatch(name) or not token:
            raise ValueError(f"{LLMOPS_API_TOKENS}: entry {number} is not name=token (a name of letters, digits and . @ _ -)")
        if name in clients:
            raise ValueError(f"{LLMOPS_API_TOKENS}: client {name!r} is listed twice")
        clients[name] = token
    return clients


def _check_json(body: bytes) -> None:
    """Refuse what Python's json reads but JSON does not allow, naming where: NaN and Infinity (also numbers too
    large for a float), integers beyond ±2**53, lone surrogates (not Unicode text)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise invalid(f"body: not JSON: {error}") from None
    stack: list[tuple[tuple, object]] = [((), data)]  # a loop, not recursion: nesting depth is the client's choice
    while stack:
        path, value = stack.pop()
        problem = None
        if isinstance(value, dict):
            stack.extend(pair for key, item in value.items() for pair in (((*path, key), key), ((*path, key), item)))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number (NaN and Infinity are not JSON)"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            problem = "integers must be within ±2**53"
        elif isinstance(value, str) and SURROGATE.search(value):
            problem = "must be Unicode text (it holds a lone surrogate)"
        if problem:
            raise invalid(f"{'.'.join(map(str, path)) or 'body'}: {problem}")


class _Gate:
    """What every request passes before any route: the bearer token (all paths but /health, when tokens are
    configured), then the body, read whole but at most MAX_BODY_BYTES, and checked as strict JSON."""

    def __init__(self, app: ASGIApp, callers: dict[bytes, str | None]):
        self.app, self.callers = app, callers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            if self.callers and scope["path"] != "/health":
                scope[CALLER] = self.authenticate(dict(scope["headers"]).get(b"authorization", b""))
            body = await self.read(dict(scope["headers"]).get(b"content-length", b""), receive)
            if body:
                _check_json(body)
        except ApiError as error:
            return await error_response(error)(scope, receive, send)
        replayed = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> dict:
            return replayed.pop() if replayed else await receive()

        await self.app(scope, replay, send)

    def authenticate(self, header: bytes) -> str | None:
        scheme, _, given = header.partition(b" ")
        # every token compared, each in constant time: how long the answer takes does not reveal a token's content
        matches = [name for token, name in self.callers.items() if hmac.compare_digest(given.strip(), token)]
        if scheme.lower() != b"bearer" or not matches:
            raise ApiError("UNAUTHENTICATED", f"Send `Authorization: Bearer <token>` with a token of {LLMOPS_API_TOKEN} "
                           f"or {LLMOPS_API_TOKENS}.")
        return matches[0]

    @staticmethod
    async def read(content_length: bytes, receive: Receive) -> bytes:
        too_large = ApiError("INVALID_PARAMETER_VALUE", f"body: larger than {MAX_BODY_BYTES} bytes", status=413)
        if content_length.isdigit() and int(content_length) > DRAIN_BYTES:
            raise too_large
        # Past the limit the rest is read and dropped (up to DRAIN_BYTES): a client that sends its whole body before
        # reading the answer gets the 413 instead of a reset connection.
        chunks, size, more = [], 0, True
        while more and size <= DRAIN_BYTES:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
            more = message["type"] == "http.request" and message.get("more_body", False)
        if size > MAX_BODY_BYTES:
            raise too_large
        return b"".join(chunks)


def create_app(warehouse_path: str, tracking_uri: str | None = None, *, token: str | None = None,
               client_tokens: dict[str, str] | None = None, reports_dir: str | Path | None = None) -> FastAPIOffline:
    """The app over the warehouse file; with `tracking_uri`, also the feedback API logging into that store; with
    `reports_dir` (the insights_report asset's folder), also `GET /report`. With `token` (shared) or
    `client_tokens` ({client name: token}), every route but /health needs one of them; a client's name is then the
    source_id of its feedback."""
    named = ([(None, token)] if token else []) + list((client_tokens or {}).items())
    if not all(TOKEN.fullmatch(secret) for _, secret in named):
        raise ValueError("API tokens must be printable ASCII without spaces")
    callers = {secret.encode(): name for name, secret in named}
    if len(callers) < len(named):
        raise ValueError("every API token must be different")
    app = FastAPIOffline(
        title="llmops-platform insights API",
        description="Trace insights over the DuckDB warehouse: traffic, cost, assessments, tools, tags, "
        "dimensions and NPMI correlations. Times are epoch milliseconds (both ends inclusive); time buckets "
        "are UTC-aligned and reported by their start.",
        version="1.0",
    )
    app.add_middleware(_Gate, callers=callers)
    engine = attached_engine(warehouse_path)

    @contextmanager
    def connection() -> Iterator[sa.Connection]:
        if not Path(warehouse_path).exists():
            raise ApiError("TEMPORARILY_UNAVAILABLE",
                           "The warehouse has not been built yet: run `llmops extract` (or the warehouse_refresh job).")
        with engine.connect() as conn:
            try:
                yield conn
            except sa.exc.DBAPIError as exc:
                # A missing table or column: a warehouse an older version wrote, not yet migrated, says so (an
                # endpoint that reads only what it has, like the alerts list, answers as usual).
                if isinstance(exc.orig, (duckdb.BinderException, duckdb.CatalogException)):
                    conn.rollback()
                    check_current(conn, warehouse_path)
                raise

    @contextmanager
    def warehouse(query: InsightsQuery) -> Iterator[sa.Connection]:
        """A connection for one request, after checking that every experiment is in the warehouse."""
        with connection() as conn:
            known = known_experiments(conn, query.experiment_ids)
            missing = [e for e in query.experiment_ids if e not in known]
            if missing:
                raise not_found(f"Experiment(s) {', '.join(shown(repr(e)) for e in missing)} not found in the "
                                "tracking store the warehouse copies.")
            yield conn

    async def _error(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(api_error(exc))

    for kind in (ApiError, FeedbackError, DimensionError, InvalidFilesError, MlflowException, RequestValidationError,
                 HTTPException, Exception):
        app.add_exception_handler(kind, _error)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if reports_dir is not None:
        report = Path(reports_dir) / REPORT_FILE

        @app.get("/report", tags=["report"], response_class=HTMLResponse)
        def insights_report() -> FileResponse:
            """The insights report (HTML, Plotly charts) the insights_report asset last rendered."""
            if not report.is_file():
                raise not_found("The insights report has not been rendered yet: run `llmops extract` (or "
                                "materialize the insights_report asset).")
            # no-cache: the browser asks again (cheaply, by ETag) after each render instead of showing an old one
            return FileResponse(report, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/alerts/incidents", tags=["alerts"])
    def alert_incidents(
        state: Literal["open", "resolved", "all"] = "open",
        experiment_id: Annotated[list[str] | None, Query(description="Only these experiments' incidents "
                                                         "(repeat the parameter for several).")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> IncidentsResponse:
        """The alert incidents, newest opened first: open ones (or resolved, or all), each with its top root causes
        at opening and whether each notification was delivered. None before the alerts ran."""
        with connection() as conn:
            return IncidentsResponse(incidents=list_incidents(conn, state=state, experiment_ids=experiment_id,
                                                              limit=limit))

    if tracking_uri is not None:
        lock = Path(warehouse_path).with_name("feedback.lock")  # shared by every server of this warehouse

        def linker() -> FeedbackLinker:
            # The warehouse resolves most ids without asking MLflow; before the first extract, MLflow alone.
            return FeedbackLinker(tracking_uri, lock, engine if Path(warehouse_path).exists() else None)

        @app.post("/api/feedback", tags=["feedback"])
        def feedback(request: FeedbackRequest, http: Request) -> FeedbackResponse:
            """Log end-user feedback on the trace whose client_request_id the chat app knows. With per-client
            tokens the source_id is the caller's name."""
            caller = http.scope.get(CALLER)
            if caller is not None:
                if request.source_id not in (None, caller):
                    raise ApiError("PERMISSION_DENIED", f"source_id {shown(repr(request.source_id))} is not the "
                                   f"authenticated client {caller!r}: leave it out or send {caller!r}.")
                request = request.model_copy(update={"source_id": caller})
            return linker().log(request)

    def mlflow_route(path: str, message: type[Message], required: tuple[str, ...],
                     answer: Callable[[sa.Connection, Message], Message], summary: str) -> None:
        """A route speaking MLflow's REST protocol: its request message as JSON in, its response message out."""

        async def endpoint(http: Request) -> Response:
            request = mlflow_request(await http.body(), message(), required)

            def run() -> str:
                with connection() as conn:
                    return message_to_json(answer(conn, request))

            return Response(await run_in_threadpool(run), media_type="application/json")

        app.post(path, tags=["MLflow-compatible"], summary=summary, description=(
            f"The request and response are MLflow's `{message.__name__}` messages in MLflow's JSON; MLflow's "
            "`RestStore` and `TracingClient` call it unchanged."))(endpoint)

    mlflow_route(f"{MLFLOW_PREFIX}/metrics", QueryTraceMetrics,
                 ("experiment_ids", "view_type", "metric_name", "aggregations"),
                 trace_metrics.answer_query_trace_metrics, "MLflow's QueryTraceMetrics, from the warehouse")
    mlflow_route(f"{MLFLOW_PREFIX}/calculate-filter-correlation", CalculateTraceFilterCorrelation,
                 ("experiment_ids", "filter_string1", "filter_string2"),
                 trace_metrics.answer_filter_correlation,
                 "MLflow's CalculateTraceFilterCorrelation (NPMI of two search filters), from the warehouse")

    @app.post(f"{PREFIX}/traffic-cost/volume", tags=["traffic-cost"])
    def volume(query: InsightsQuery) -> queries.VolumeResponse:
        with warehouse(query) as conn:
            return queries.traffic_volume(conn, query)

    @app.post(f"{PREFIX}/traffic-cost/latency", tags=["traffic-cost"])
    def latency(query: InsightsQuery) -> queries.LatencyResponse:
        with warehouse(query) as conn:
            return queries.traffic_latency(conn, query)

    @app.post(f"{PREFIX}/traffic-cost/errors", tags=["traffic-cost"])
    def errors(query: InsightsQuery) -> queries.ErrorResponse:
        with warehouse(query) as conn:
            return queries.traffic_errors(conn, query)

    @app.post(f"{PREFIX}/traffic-cost/tokens", tags=["traffic-cost"])
    def tokens(query: InsightsQuery) -> queries.TokenResponse:
        with warehouse(query) as conn:
            return queries.traffic_tokens(conn, query)

    @app.post(f"{PREFIX}/assessments/discovery", tags=["assessments"])
    def assessments_discovery(query: InsightsQuery) -> breakdowns.AssessmentDiscoveryResponse:
        with warehouse(query) as conn:
            return breakdowns.assessments_discovery(conn, query)

    @app.post(f"{PREFIX}/assessments/metrics", tags=["assessments"])
    def assessment_metrics(query: breakdowns.AssessmentQuery) -> breakdowns.AssessmentMetricsResponse:
        with warehouse(query) as conn:
            result = breakdowns.assessment_metrics(conn, query)
        if result is None:
            raise not_found(f"No feedback named {shown(repr(query.assessment_name))} in these experiments and times.")
        return result

    @app.post(f"{PREFIX}/tools/discovery", tags=["tools"])
    def tools_discovery(query: InsightsQuery) -> breakdowns.ToolDiscoveryResponse:
        with warehouse(query) as conn:
            return breakdowns.tools_discovery(conn, query)

    @app.post(f"{PREFIX}/tools/metrics", tags=["tools"])
    def tool_metrics(query: breakdowns.ToolQuery) -> breakdowns.ToolMetricsResponse:
        with warehouse(query) as conn:
            return breakdowns.tool_metrics(conn, query)

    @app.post(f"{PREFIX}/tags/discovery", tags=["tags"])
    def tags_discovery(query: InsightsQuery) -> breakdowns.TagDiscoveryResponse:
        with warehouse(query) as conn:
            return breakdowns.tags_discovery(conn, query)

    @app.post(f"{PREFIX}/tags/metrics", tags=["tags"])
    def tag_metrics(query: breakdowns.TagQuery) -> breakdowns.TagMetricsResponse:
        with warehouse(query) as conn:
            return breakdowns.tag_metrics(conn, query)

    @app.post(f"{PREFIX}/dimensions/discovery", tags=["dimensions"])
    def dimensions_discovery(query: InsightsQuery) -> dimensions.DimensionsDiscoveryResponse:
        with warehouse(query) as conn:
            return dimensions.dimensions_discovery(conn, query)

    @app.post(f"{PREFIX}/dimensions/calculate-npmi", tags=["dimensions"])
    def calculate_npmi(request: dimensions.NpmiRequest) -> dimensions.NpmiResponse:
        with warehouse(request) as conn:
            return dimensions.calculate_dimensions_npmi(conn, request)

    @app.post(f"{PREFIX}/correlations", tags=["dimensions"])
    def correlations(request: dimensions.CorrelationsRequest) -> dimensions.CorrelationsResponse:
        with warehouse(request) as conn:
            return dimensions.correlations(conn, request)

    return app
