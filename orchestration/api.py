"""The insights REST API (POST JSON under /api/3.0/mlflow/traces/insights/) and the feedback API
(`POST /api/feedback`), served by `llmops serve`.

Each request attaches the warehouse read-only for its own duration (waiting while an extract holds the write
lock), so the server never blocks the Dagster runs that write the file. Errors use MLflow's error JSON
(`error_code`, `message`): INVALID_PARAMETER_VALUE → 400, RESOURCE_NOT_FOUND → 404.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from assets.insights import breakdowns, dimensions, queries
from assets.insights.npmi import DimensionError
from assets.insights.queries import TRACES, InsightsQuery
from assets.labeling.feedback import FeedbackLinker, FeedbackNotFound, FeedbackRequest, FeedbackResponse
from resources.warehouse import attached_engine

PREFIX = "/api/3.0/mlflow/traces/insights"
log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


def not_found(message: str) -> ApiError:
    return ApiError(404, "RESOURCE_NOT_FOUND", message)


def create_app(warehouse_path: str, tracking_uri: str | None = None) -> FastAPIOffline:
    """The app over the warehouse file; with `tracking_uri`, also the feedback API logging into that store."""
    app = FastAPIOffline(
        title="llmops-platform insights API",
        description="Trace insights over the DuckDB warehouse: traffic, cost, assessments, tools, tags, "
        "dimensions and NPMI correlations. Times are epoch milliseconds (both ends inclusive); time buckets "
        "are UTC-aligned and reported by their start.",
        version="1.0",
    )
    engine = attached_engine(warehouse_path)

    @contextmanager
    def warehouse(query: InsightsQuery) -> Iterator[sa.Connection]:
        """A connection for one request, after checking that every experiment is in the warehouse."""
        if not Path(warehouse_path).exists():
            raise ApiError(503, "TEMPORARILY_UNAVAILABLE",
                           "The warehouse has not been built yet: run `llmops extract` (or the warehouse_refresh job).")
        with engine.connect() as conn:
            known = set(conn.execute(
                sa.select(TRACES.c.experiment_id).distinct().where(TRACES.c.experiment_id.in_(query.experiment_ids))
            ).scalars())
            missing = [e for e in query.experiment_ids if e not in known]
            if missing:
                raise not_found(f"Experiment(s) {', '.join(map(repr, missing))} not found: no traces in the warehouse.")
            yield conn

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error_code": exc.error_code, "message": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
            problems.append(f"{field}: {error['msg']}")
        return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": "; ".join(problems)}, status_code=400)

    @app.exception_handler(DimensionError)
    async def _dimension_error(_request: Request, exc: DimensionError) -> JSONResponse:
        return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("insights request failed")
        return JSONResponse({"error_code": "INTERNAL_ERROR", "message": f"{type(exc).__name__}: see the server log"},
                            status_code=500)

    @app.exception_handler(FeedbackNotFound)
    async def _feedback_not_found(_request: Request, exc: FeedbackNotFound) -> JSONResponse:
        return JSONResponse({"error_code": "RESOURCE_NOT_FOUND", "message": str(exc)}, status_code=404)

    if tracking_uri is not None:
        def linker() -> FeedbackLinker:
            # The warehouse resolves most ids without asking MLflow; before the first extract, MLflow alone.
            return FeedbackLinker(tracking_uri, engine if Path(warehouse_path).exists() else None)

        @app.post("/api/feedback", tags=["feedback"])
        def feedback(request: FeedbackRequest) -> FeedbackResponse:
            """Log end-user feedback on the trace whose client_request_id the chat app knows."""
            return linker().log(request)

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
            raise not_found(f"No feedback named {query.assessment_name!r} in these experiments and times.")
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
