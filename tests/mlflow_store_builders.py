"""Write traces, spans and assessments through MLflow's own store API (`SqlAlchemyStore`), the way MLflow's
tests do (tests/store/tracking/sqlalchemy_store/): `start_trace(TraceInfo(...))`, `log_spans`,
`create_assessment`.

`span()` is MLflow's test helper `create_test_span` with a real OpenTelemetry `SpanContext` in place of its
mock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow.entities import AssessmentSource, AssessmentSourceType, Expectation, Feedback, TraceInfo
from mlflow.entities.assessment import Assessment, AssessmentError
from mlflow.entities.span import Span, create_mlflow_span
from mlflow.entities.trace_location import TraceLocation
from mlflow.entities.trace_state import TraceState
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey
from mlflow.tracing.utils import TraceJSONEncoder
from mlflow.utils.time import get_current_time_millis
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

HUMAN = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id="user@test.com")
CODE = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="test_suite")
OK, ERROR, UNSET = trace_api.StatusCode.OK, trace_api.StatusCode.ERROR, trace_api.StatusCode.UNSET


def _context(trace_num: int, span_id: int) -> trace_api.SpanContext:
    return trace_api.SpanContext(trace_id=trace_num, span_id=span_id, is_remote=False,
                                 trace_flags=trace_api.TraceFlags(1))


def span(trace_id: str, name: str = "test_span", *, span_id: int = 111, parent_id: int | None = None,
         status: trace_api.StatusCode | None = UNSET, start_ns: int = 1_000_000_000,
         end_ns: int = 2_000_000_000,
         span_type: str = "LLM", attributes: dict | None = None, trace_num: int = 12345) -> Span:
    """An MLflow span of trace `trace_id` (MLflow's `create_test_span`: attributes JSON-encoded, as there)."""
    otel_span = ReadableSpan(
        name=name,
        context=_context(trace_num, span_id),
        parent=_context(trace_num, parent_id) if parent_id else None,
        attributes={
            "mlflow.traceRequestId": json.dumps(trace_id),
            "mlflow.spanType": json.dumps(span_type, cls=TraceJSONEncoder),
            **{k: json.dumps(v, cls=TraceJSONEncoder) for k, v in (attributes or {}).items()},
        },
        start_time=start_ns,
        end_time=end_ns,
        status=trace_api.Status(UNSET if status is None else status),
        resource=Resource.get_empty(),
    )
    return create_mlflow_span(otel_span, trace_id, span_type)


@dataclass
class ExperimentBuilder:
    """One experiment of `store`; trace ids are prefixed with the experiment's name, so that MLflow's test
    data (whose every test reuses "trace1".."trace5") fits many experiments in one store."""

    store: SqlAlchemyStore
    experiment_id: str
    name: str

    def trace_id(self, short_id: str) -> str:
        return f"{self.name}-{short_id}"

    def trace(self, short_id: str, *, name: str | None = "test_trace", duration_ms: int | None = 100,
              state: TraceState = TraceState.OK, request_time: int | None = None, tags: dict | None = None,
              metadata: dict | None = None, session: str | None = None, tokens: dict | None = None) -> str:
        trace_metadata = dict(metadata or {})
        if session is not None:
            trace_metadata[TraceMetadataKey.TRACE_SESSION] = session
        if tokens is not None:
            trace_metadata[TraceMetadataKey.TOKEN_USAGE] = json.dumps(tokens)
        trace_tags = dict(tags or {})
        if name is not None:
            trace_tags[TraceTagKey.TRACE_NAME] = name
        trace_id = self.trace_id(short_id)
        self.store.start_trace(TraceInfo(
            trace_id=trace_id,
            trace_location=TraceLocation.from_experiment_id(self.experiment_id),
            request_time=get_current_time_millis() if request_time is None else request_time,
            execution_duration=duration_ms,
            state=state,
            tags=trace_tags,
            trace_metadata=trace_metadata,
        ))
        return trace_id

    def spans(self, short_id: str, *specs: dict) -> None:
        """Log one span per spec (keyword arguments of `span()`, `name` included) on trace `short_id`."""
        trace_id = self.trace_id(short_id)
        self.store.log_spans(self.experiment_id, [span(trace_id, **spec) for spec in specs])

    def feedback(self, short_id: str, name: str, value, *, source: AssessmentSource = HUMAN,
                 create_time_ms: int | None = None, error: AssessmentError | None = None,
                 overrides: str | None = None) -> Assessment:
        return self.store.create_assessment(Feedback(
            trace_id=self.trace_id(short_id), name=name, value=value, source=source,
            create_time_ms=create_time_ms, error=error, overrides=overrides,
        ))

    def expectation(self, short_id: str, name: str, value, *, source: AssessmentSource = CODE) -> Assessment:
        return self.store.create_assessment(Expectation(
            trace_id=self.trace_id(short_id), name=name, value=value, source=source))
