"""End-user feedback linked to its trace by `client_request_id` (seed 002), logged as MLflow feedback.

The chat app knows only the `client_request_id` it set on the trace. The trace id is looked up in the
warehouse's `client_request_id` index, or, when the warehouse has not copied the trace yet, with MLflow's
`search_traces`. `client_request_id` is not unique: the newest trace of the experiment with it wins. An
optional idempotency key is stored in the feedback's metadata, so a retried request logs once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback
from mlflow.tracing.client import TracingClient
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from assets.insights.npmi import mlflow_literal
from assets.insights.queries import TRACES

IDEMPOTENCY_KEY = "llmops.idempotency_key"
_logging = threading.Lock()  # one check-then-log at a time, so two retries of one request cannot both log


class FeedbackNotFound(LookupError):
    """No experiment or no trace matches the request; the message says which."""


class FeedbackRequest(BaseModel):
    """The seed's LogAssessmentRequest, naming an experiment instead of an agent."""

    model_config = ConfigDict(extra="forbid")
    experiment_id: str | None = Field(default=None, min_length=1)
    experiment_name: str | None = Field(default=None, min_length=1)
    client_request_id: str = Field(min_length=1, max_length=50, description="As set on the trace (≤ 50 characters).")
    assessment_name: str = Field(min_length=1, max_length=200, pattern=r"^[\w .:/-]+$")
    assessment_value: StrictBool | StrictInt | StrictFloat | StrictStr
    rationale: str | None = None
    source_id: str | None = Field(default=None, max_length=200, description="Who gave it; default 'anonymous'.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_experiment(self) -> FeedbackRequest:
        if (self.experiment_id is None) == (self.experiment_name is None):
            raise ValueError("give exactly one of experiment_id and experiment_name")
        return self


class FeedbackResponse(BaseModel):
    trace_id: str
    assessment_id: str
    resolved_by: Literal["warehouse", "mlflow"] = Field(description="Where the trace id was found.")
    duplicate: bool = Field(description="True when the idempotency key had already been logged: nothing new.")


@dataclass
class FeedbackLinker:
    """Logs feedback into the tracking store at `tracking_uri`; `warehouse` (a SQLAlchemy engine, optional)
    resolves client request ids without asking MLflow."""

    tracking_uri: str
    warehouse: sa.Engine | None = None

    def experiment_id(self, request: FeedbackRequest) -> str:
        client = MlflowClient(self.tracking_uri)
        if request.experiment_name is not None:
            experiment = client.get_experiment_by_name(request.experiment_name)
            if experiment is None:
                raise FeedbackNotFound(f"No experiment named {request.experiment_name!r}.")
            return experiment.experiment_id
        try:
            return client.get_experiment(request.experiment_id).experiment_id
        except Exception:
            raise FeedbackNotFound(f"No experiment with id {request.experiment_id!r}.") from None

    def resolve(self, experiment_id: str, client_request_id: str) -> tuple[str, str]:
        """(trace id, where it was found) of the newest trace with this client request id."""
        if self.warehouse is not None:
            with self.warehouse.connect() as conn:
                found = conn.execute(
                    sa.select(TRACES.c.trace_id)
                    .where(TRACES.c.experiment_id == experiment_id, TRACES.c.client_request_id == client_request_id)
                    .order_by(TRACES.c.timestamp_ms.desc()).limit(1)
                ).scalar()
            if found:
                return found, "warehouse"
        literal = mlflow_literal(client_request_id)
        if literal is not None:  # MLflow's filter syntax cannot quote a value holding both kinds of quote
            traces = MlflowClient(self.tracking_uri).search_traces(
                locations=[experiment_id], filter_string=f"attributes.client_request_id = {literal}",
                max_results=1, order_by=["timestamp_ms DESC"], include_spans=False,
            )
            if traces:
                return traces[0].info.trace_id, "mlflow"
        raise FeedbackNotFound(f"No trace with client_request_id {client_request_id!r} in experiment {experiment_id}.")

    def log(self, request: FeedbackRequest) -> FeedbackResponse:
        trace_id, via = self.resolve(self.experiment_id(request), request.client_request_id)
        tracing = TracingClient(self.tracking_uri)
        with _logging:
            if request.idempotency_key:
                logged = tracing.get_trace_info(trace_id).assessments or []
                if seen := next((a for a in logged if (a.metadata or {}).get(IDEMPOTENCY_KEY) == request.idempotency_key),
                                None):
                    return FeedbackResponse(trace_id=trace_id, assessment_id=seen.assessment_id, resolved_by=via,
                                            duplicate=True)
            feedback = Feedback(
                name=request.assessment_name, value=request.assessment_value, rationale=request.rationale,
                source=AssessmentSource(AssessmentSourceType.HUMAN, request.source_id or "anonymous"),
                metadata={IDEMPOTENCY_KEY: request.idempotency_key} if request.idempotency_key else None,
            )
            logged = tracing.log_assessment(trace_id, feedback)
        return FeedbackResponse(trace_id=trace_id, assessment_id=logged.assessment_id, resolved_by=via, duplicate=False)
