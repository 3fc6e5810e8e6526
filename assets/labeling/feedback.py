"""End-user feedback linked to its trace by `client_request_id` (seed 002), logged as MLflow feedback.

The chat app knows only the `client_request_id` it set on the trace. The trace id is looked up in the
warehouse's `traces` table, or, when the warehouse has not copied the trace yet, with MLflow's
`search_traces`. `client_request_id` is not unique: the newest trace of the experiment with it wins. An
optional idempotency key is stored in the feedback's metadata, so a retried request logs once, even when the
retry reaches another process.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback
from mlflow.exceptions import MlflowException
from mlflow.tracing.client import TracingClient
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from assets.insights.breakdowns import assessment_type
from assets.insights.npmi import mlflow_literal
from assets.insights.queries import TRACES, InsightsQuery
from resources.settings import mask_uri, scrub

IDEMPOTENCY_KEY = "llmops.idempotency_key"
MAX_TEXT = 10_000  # characters of a string value or a rationale
MAX_INT = 2**53  # beyond it JSON clients (and MLflow's REST protobuf doubles) lose digits
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # ids and keys: no control characters


class FeedbackError(Exception):
    """Feedback was not logged. `error_code` (MLflow's) says whether a retry can help: RESOURCE_NOT_FOUND (no such
    experiment or trace) and INVALID_PARAMETER_VALUE (MLflow refused the request) are final, TEMPORARILY_UNAVAILABLE
    (the tracking store failed or did not answer) is not."""

    def __init__(self, error_code: str, message: str):
        super().__init__(message)
        self.error_code = error_code


class FeedbackRequest(BaseModel):
    """The seed's LogAssessmentRequest, naming an experiment instead of an agent."""

    model_config = ConfigDict(extra="forbid")
    experiment_id: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")
    experiment_name: str | None = Field(default=None, min_length=1, max_length=256, pattern=PRINTABLE)
    client_request_id: str = Field(min_length=1, max_length=50, description="As set on the trace (≤ 50 characters).")
    assessment_name: str = Field(min_length=1, max_length=200, pattern=r"^[\w .:/-]+$")
    assessment_value: (
        StrictBool
        | StrictInt
        | Annotated[StrictFloat, Field(allow_inf_nan=False)]
        | Annotated[StrictStr, Field(max_length=MAX_TEXT)]
    ) = Field(description=f"A boolean, a finite number (integers within ±2**53) or a string of ≤ {MAX_TEXT} characters.")
    rationale: str | None = Field(default=None, max_length=MAX_TEXT)
    source_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=PRINTABLE,
                                  description="Who gave it; default 'anonymous'.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200, pattern=PRINTABLE)

    @field_validator("assessment_value", mode="before")
    @classmethod
    def _exact_integer(cls, value: object) -> object:
        # before the union: its float member would take a larger int, rounded
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ValueError("integers must be within ±2**53")
        return value

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


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, for every thread and process of this machine that uses the file; the kernel
    releases it when the holder exits, crashed or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:  # a new open file per call: flock excludes other threads of this process too
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


@dataclass
class FeedbackLinker:
    """Logs feedback into the tracking store at `tracking_uri`. Keyed requests hold the lock file `lock_path` from
    the check in MLflow to the log: every process logging into the store must use the same file. `warehouse`
    (a SQLAlchemy engine, optional) resolves client request ids without asking MLflow."""

    tracking_uri: str
    lock_path: Path
    warehouse: sa.Engine | None = None

    @contextmanager
    def _mlflow(self, doing: str, missing: str | None = None) -> Iterator[None]:
        """MLflow's errors as FeedbackError: a missing resource (`missing` says which) or a refused request is final,
        anything else — unreachable, timed out, 5xx — is temporary. Messages never show the URI's password."""
        try:
            yield
        except (MlflowException, OSError) as error:  # OSError: a connection MLflow did not wrap
            detail = scrub(getattr(error, "message", None) or f"{type(error).__name__}: {error}", self.tracking_uri)
            code = getattr(error, "error_code", None)
            if code == "RESOURCE_DOES_NOT_EXIST":
                raise FeedbackError("RESOURCE_NOT_FOUND", missing or detail) from None
            if code == "INVALID_PARAMETER_VALUE":
                raise FeedbackError("INVALID_PARAMETER_VALUE", f"MLflow refused to {doing}: {detail}") from None
            raise FeedbackError("TEMPORARILY_UNAVAILABLE", f"Could not {doing} in MLflow at {mask_uri(self.tracking_uri)}, "
                                f"retry later: {detail}") from None

    def experiment_id(self, request: FeedbackRequest) -> str:
        client = MlflowClient(self.tracking_uri)
        if request.experiment_name is not None:
            with self._mlflow("look up the experiment"):
                experiment = client.get_experiment_by_name(request.experiment_name)
            if experiment is None:
                raise FeedbackError("RESOURCE_NOT_FOUND", f"No experiment named {request.experiment_name!r}.")
            return experiment.experiment_id
        with self._mlflow("look up the experiment", missing=f"No experiment with id {request.experiment_id!r}."):
            return client.get_experiment(request.experiment_id).experiment_id

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
            with self._mlflow("search the traces"):
                traces = MlflowClient(self.tracking_uri).search_traces(
                    locations=[experiment_id], filter_string=f"attributes.client_request_id = {literal}",
                    max_results=1, order_by=["timestamp_ms DESC"], include_spans=False,
                )
            if traces:
                return traces[0].info.trace_id, "mlflow"
        raise FeedbackError("RESOURCE_NOT_FOUND",
                            f"No trace with client_request_id {client_request_id!r} in experiment {experiment_id}.")

    def check_type(self, experiment_id: str, request: FeedbackRequest) -> None:
        """Refuse a value whose type differs from the feedback of that name the warehouse has: one `"false"` string
        would turn a boolean thumbs feedback into a string one, and its rates and root causes would vanish."""
        if self.warehouse is None:
            return  # before the first extract nothing is known yet
        with self.warehouse.connect() as conn:
            expected = assessment_type(conn, InsightsQuery(experiment_ids=[experiment_id]), request.assessment_name)
        value = request.assessment_value
        given = "boolean" if isinstance(value, bool) else "numeric" if isinstance(value, (int, float)) else "string"
        if expected is not None and expected != given:
            raise FeedbackError("INVALID_PARAMETER_VALUE",
                                f"assessment_value: feedback {request.assessment_name!r} in experiment {experiment_id} "
                                f"is {expected}; send a {expected} value, not a {given} one.")

    def log(self, request: FeedbackRequest) -> FeedbackResponse:
        experiment_id = self.experiment_id(request)
        self.check_type(experiment_id, request)
        trace_id, via = self.resolve(experiment_id, request.client_request_id)
        tracing = TracingClient(self.tracking_uri)
        key = request.idempotency_key
        # MLflow stays the source of truth for "already logged"; the lock makes its check and the log one step
        with _exclusive(self.lock_path) if key else nullcontext(), self._mlflow("log the feedback"):
            if key:
                logged = tracing.get_trace_info(trace_id).assessments or []
                if seen := next((a for a in logged if (a.metadata or {}).get(IDEMPOTENCY_KEY) == key), None):
                    return FeedbackResponse(trace_id=trace_id, assessment_id=seen.assessment_id, resolved_by=via,
                                            duplicate=True)
            feedback = Feedback(
                name=request.assessment_name, value=request.assessment_value, rationale=request.rationale,
                source=AssessmentSource(AssessmentSourceType.HUMAN, request.source_id or "anonymous"),
                metadata={IDEMPOTENCY_KEY: key} if key else None,
            )
            logged = tracing.log_assessment(trace_id, feedback)
        return FeedbackResponse(trace_id=trace_id, assessment_id=logged.assessment_id, resolved_by=via, duplicate=False)
