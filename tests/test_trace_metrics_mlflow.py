"""MLflow's own `query_trace_metrics` tests, ported: the warehouse (`WarehouseTraceStore`) gives MLflow's
answer.

Ported from mlflow/mlflow tests/store/tracking/sqlalchemy_store/test_sqlalchemy_store_query_trace_metrics.py
(read at commit 07dbde065308913e8e77c28181239e3db069e61d; its helper `create_test_span`, from
test_sqlalchemy_store.py, is `span` in tests/mlflow_store_builders.py): every `test_query_trace_metrics_*`,
`test_query_span_metrics_*`, `test_query_assessment_*` and `test_query_assessments_metrics_invalid_filters`
case: trace/session counts, latency, tokens and cache tokens; span counts, latency and input/output/total
cost by name/type/status/model/provider; assessment counts and values; `trace.*`, `span.*` and
`assessment.*` filters; hourly buckets; percentiles; invalid filters. Each MLflow test's data is written
through MLflow's store API (`start_trace`, `log_spans`, `create_assessment`, as MLflow's tests do) into its
own experiment of ONE SQLite store, which is extracted ONCE into a warehouse. Every case asks both
`SqlAlchemyStore.query_trace_metrics` (MLflow 3.17, live) and `WarehouseTraceStore.query_trace_metrics` the
same question: MLflow's answer must equal the literal answer of MLflow's test (so both sides cannot be wrong
together), and ours must equal MLflow's, data point for data point, in order; a bad request must raise
MLflow's error code and message on both.

Where MLflow 3.17.2 itself disagrees with the upstream test file, the literal is 3.17.2's and the case says
why (assessments are bucketed by their trace's time, not their creation time). Cases marked "not in MLflow's
file" probe semantics read from mlflow/store/tracking/utils/sql_trace_metrics_utils.py: MIN/MAX,
`max_results`, time ranges without buckets, span latency truncated to whole milliseconds, span counts
windowed by their trace's time but costs by their own start, overridden feedback, `mlflow.*` filter keys
served from columns, runs linked with `link_traces_to_run`, byte-order sorting of dimensions, COUNT over
nothing, and bad requests MLflow's file does not try.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities.assessment import AssessmentError
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.entities.trace_state import TraceState
from mlflow.exceptions import MlflowException
from mlflow.genai.judges import CategoricalRating
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracing.constant import (
    AssessmentMetricDimensionKey,
    AssessmentMetricKey,
    SpanAttributeKey,
    SpanMetricDimensionKey,
    SpanMetricKey,
    TraceMetadataKey,
    TraceMetricDimensionKey,
    TraceMetricKey,
)

from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.mlflow_store_builders import CODE, ERROR, OK, ExperimentBuilder

TRACES, SPANS, ASSESSMENTS = MetricViewType.TRACES, MetricViewType.SPANS, MetricViewType.ASSESSMENTS
COUNT, SUM, AVG, MIN, MAX = (MetricAggregation(aggregation_type=AggregationType[name])
                             for name in ("COUNT", "SUM", "AVG", "MIN", "MAX"))
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0)
INT_PERCENTILES = (50, 75, 90, 95, 99)  # labelled P50... (floats are labelled P50.0...)
SONNET = "claude-3-5-sonnet"
BASE_MS = 1577836800000  # 2020-01-01 00:00:00 UTC, MLflow's tests' base time
HOUR_MS, MINUTE_MS = 3_600_000, 60_000
BASE_NS, HOUR_NS, MINUTE_NS = BASE_MS * 1_000_000, HOUR_MS * 1_000_000, MINUTE_MS * 1_000_000
SOURCE_RUN, TOKEN_USAGE = TraceMetadataKey.SOURCE_RUN, TraceMetadataKey.TOKEN_USAGE
TRACE_NAME, TRACE_STATUS = TraceMetricDimensionKey.TRACE_NAME, TraceMetricDimensionKey.TRACE_STATUS
SPAN_NAME, SPAN_TYPE, SPAN_STATUS = (SpanMetricDimensionKey.SPAN_NAME, SpanMetricDimensionKey.SPAN_TYPE,
                                     SpanMetricDimensionKey.SPAN_STATUS)
MODEL_NAME, MODEL_PROVIDER = (SpanMetricDimensionKey.SPAN_MODEL_NAME,
                              SpanMetricDimensionKey.SPAN_MODEL_PROVIDER)
ASSESSMENT_NAME, ASSESSMENT_VALUE = (AssessmentMetricDimensionKey.ASSESSMENT_NAME,
                                     AssessmentMetricDimensionKey.ASSESSMENT_VALUE)


def pct(value: float) -> MetricAggregation:
    return MetricAggregation(aggregation_type=AggregationType.PERCENTILE, percentile_value=value)


def bucket(ms: int) -> str:
    """A `time_bucket` dimension as MLflow writes it."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def tokens(input_tokens, output_tokens, total_tokens, cache_read=None, cache_creation=None) -> dict:
    """A trace's token usage metadata (`mlflow.trace.tokenUsage`), as MLflow's token tests write it."""
    usage = {TraceMetricKey.INPUT_TOKENS: input_tokens, TraceMetricKey.OUTPUT_TOKENS: output_tokens,
             TraceMetricKey.TOTAL_TOKENS: total_tokens}
    if cache_read is not None:
        usage[TraceMetricKey.CACHE_READ_INPUT_TOKENS] = cache_read
        usage[TraceMetricKey.CACHE_CREATION_INPUT_TOKENS] = cache_creation
    return usage


def cost(input_cost, output_cost, total_cost, model=None, provider=None) -> dict:
    """Span attributes of an LLM call with a cost (and a model, and a provider)."""
    attributes = {SpanAttributeKey.LLM_COST: {"input_cost": input_cost, "output_cost": output_cost,
                                              "total_cost": total_cost}}
    if model is not None:
        attributes[SpanAttributeKey.MODEL] = model
    if provider is not None:
        attributes[SpanAttributeKey.MODEL_PROVIDER] = provider
    return attributes


# ----------------------------------------------------------------------------------------------------------
# MLflow's test data, one experiment each (named after the function); a comment names the MLflow test(s).

SCENARIOS: dict[str, Callable[[ExperimentBuilder], None]] = {}


def scenario(build: Callable[[ExperimentBuilder], None]) -> Callable[[ExperimentBuilder], None]:
    SCENARIOS[build.__name__] = build
    return build


@scenario
def five_traces(b):  # test_query_trace_metrics_count_no_dimensions
    for i in range(5):
        b.trace(f"trace{i}", duration_ms=100 + i * 10)


@scenario
def sessions(b):  # test_query_trace_metrics_session_count_no_dimensions
    for short_id, session in [("trace1", "session-a"), ("trace2", "session-a"), ("trace3", "session-b"),
                              ("trace4", "session-c"), ("trace5", None)]:
        b.trace(short_id, session=session)


@scenario
def sessions_and_source_runs(b):  # ..._session_count_with_trace_metadata_filter_on_other_key
    for short_id, session, run in [("trace1", "session-a", "run-1"), ("trace2", "session-a", "run-1"),
                                   ("trace3", "session-b", "run-1"), ("trace4", "session-c", "run-2"),
                                   ("trace5", None, "run-1")]:
        b.trace(short_id, session=session, metadata={SOURCE_RUN: run})


@scenario
def statuses(b):  # test_query_trace_metrics_count_by_status, ..._with_status_filter
    for i, state in enumerate([TraceState.OK] * 3 + [TraceState.ERROR] * 2, start=1):
        b.trace(f"trace{i}", state=state)


@scenario
def names(b):  # test_query_trace_metrics_count_by_name
    for i, name in enumerate(["workflow_a"] * 3 + ["workflow_b"] * 2, start=1):
        b.trace(f"trace{i}", name=name)


@scenario
def statuses_and_names(b):  # test_query_trace_metrics_count_by_multiple_dimensions
    for i, (state, name) in enumerate([(TraceState.OK, "workflow_a"), (TraceState.OK, "workflow_a"),
                                       (TraceState.ERROR, "workflow_a"), (TraceState.OK, "workflow_b"),
                                       (TraceState.ERROR, "workflow_b")], start=1):
        b.trace(f"trace{i}", state=state, name=name)


def _latencies(b, rows):
    for i, (name, duration) in enumerate(rows, start=1):
        b.trace(f"trace{i}", name=name, duration_ms=duration)


@scenario
def latencies(b):  # test_query_trace_metrics_latency_avg
    _latencies(b, [("workflow_a", 100), ("workflow_a", 200), ("workflow_a", 300), ("workflow_b", 150),
                   ("workflow_b", 250)])


@scenario
def latencies_for_percentiles(b):  # test_query_trace_metrics_latency_percentiles
    _latencies(b, [("workflow_a", 100), ("workflow_a", 200), ("workflow_a", 300), ("workflow_b", 100),
                   ("workflow_b", 200)])


@scenario
def identical_latencies(b):  # test_query_trace_metrics_latency_percentile_identical_values
    _latencies(b, [("workflow_a", 50), ("workflow_a", 50)])


@scenario
def five_latencies(b):  # test_query_trace_metrics_latency_multiple_aggregations
    _latencies(b, [("workflow_a", d) for d in (100, 200, 300, 400, 500)])


@scenario
def hourly_traces(b):  # test_query_trace_metrics_with_time_interval
    for i, (at, duration) in enumerate([(BASE_MS, 100), (BASE_MS + 10 * MINUTE_MS, 200),
                                        (BASE_MS + HOUR_MS, 150), (BASE_MS + HOUR_MS + 30 * MINUTE_MS, 250),
                                        (BASE_MS + 2 * HOUR_MS, 300)], start=1):
        b.trace(f"trace{i}", request_time=at, duration_ms=duration)


@scenario
def hourly_sessions(b):  # test_query_trace_metrics_session_count_with_time_interval
    for i, (at, session) in enumerate([(BASE_MS, "session-a"), (BASE_MS + 10 * MINUTE_MS, "session-a"),
                                       (BASE_MS + 20 * MINUTE_MS, "session-b"),
                                       (BASE_MS + HOUR_MS, "session-c"),
                                       (BASE_MS + HOUR_MS + 30 * MINUTE_MS, "session-c"),
                                       (BASE_MS + 2 * HOUR_MS, None)], start=1):
        b.trace(f"trace{i}", request_time=at, session=session)


@scenario
def hourly_statuses(b):  # test_query_trace_metrics_with_time_interval_and_dimensions
    for i, (at, state, duration) in enumerate([(BASE_MS, TraceState.OK, 100),
                                               (BASE_MS + 10 * MINUTE_MS, TraceState.ERROR, 200),
                                               (BASE_MS + HOUR_MS, TraceState.OK, 150),
                                               (BASE_MS + HOUR_MS, TraceState.ERROR, 250)], start=1):
        b.trace(f"trace{i}", request_time=at, state=state, duration_ms=duration)


@scenario
def source_runs(b):  # test_query_trace_metrics_with_source_run_filter
    for i, run in enumerate(["run_123", "run_123", "run_456", "run_456", None], start=1):
        b.trace(f"trace{i}", metadata={SOURCE_RUN: run} if run else {})


@scenario
def statuses_and_source_runs(b):  # test_query_trace_metrics_with_multiple_filters
    for i, (state, run) in enumerate([(TraceState.OK, "run_123"), (TraceState.OK, "run_123"),
                                      (TraceState.ERROR, "run_123"), (TraceState.OK, "run_456"),
                                      (TraceState.ERROR, "run_456")], start=1):
        b.trace(f"trace{i}", state=state, metadata={SOURCE_RUN: run})


@scenario
def model_version_tags(b):  # test_query_trace_metrics_with_tag_filter
    for i, version in enumerate(["model_v1", "model_v1", "model_v2", "model_v2", None], start=1):
        b.trace(f"trace{i}", tags={"tag1": "value1", **({"model.version": version} if version else {})})


@scenario
def one_trace(b):  # test_query_trace_metrics_with_invalid_filter
    b.trace("trace1")


@scenario
def token_usage(b):  # traces_with_token_usage_setup: test_query_trace_metrics_total_tokens_*
    for i, (name, inp, out, total) in enumerate([("workflow_a", 100, 50, 150), ("workflow_a", 200, 100, 300),
                                                 ("workflow_a", 150, 75, 225), ("workflow_b", 300, 150, 450),
                                                 ("workflow_b", 250, 125, 375)], start=1):
        b.trace(f"trace{i}", name=name, tokens=tokens(inp, out, total))


@scenario
def no_token_usage(b):  # test_query_trace_metrics_total_tokens_without_token_usage
    for i in range(3):
        b.trace(f"trace{i}")


@scenario
def cached_token_usage(b):  # traces_with_cached_token_usage_setup: test_query_trace_metrics_cache_*
    for i, (name, inp, out, total, read, creation) in enumerate(
            [("workflow_a", 100, 50, 150, 30, 10), ("workflow_a", 200, 100, 300, 60, 20),
             ("workflow_a", 150, 75, 225, 0, 0), ("workflow_b", 300, 150, 450, 100, 50),
             ("workflow_b", 250, 125, 375, 80, 40)], start=1):
        b.trace(f"trace{i}", name=name, tokens=tokens(inp, out, total, read, creation))


def _spans_of_one_trace(b, *specs, **trace_kwargs):
    b.trace("trace1", **trace_kwargs)
    b.spans("trace1", *specs)


def _typed(*types):
    """Spans span1..spanN of the given types, 100 ms apart from t=1 s (MLflow's `start_ns` pattern)."""
    return [dict(name=f"span{i}", span_id=i, span_type=t, start_ns=1_000_000_000 + (i - 1) * 100_000_000)
            for i, t in enumerate(types, start=1)]


@scenario
def five_spans(b):  # test_query_span_metrics_count_no_dimensions
    _spans_of_one_trace(b, *_typed("LLM", "CHAIN", "LLM", "TOOL", "LLM"))


@scenario
def span_types(b):  # test_query_span_metrics_count_by_span_type
    _spans_of_one_trace(b, *_typed("LLM", "LLM", "LLM", "CHAIN", "CHAIN", "TOOL"))


@scenario
def span_statuses(b):  # test_query_span_metrics_count_by_span_status
    specs = _typed("LLM", "LLM", "LLM", "CHAIN", "CHAIN")
    for spec, status in zip(specs, [OK, OK, OK, ERROR, ERROR]):
        spec["status"] = status
    _spans_of_one_trace(b, *specs)


@scenario
def hourly_spans(b):  # test_query_span_metrics_with_time_interval
    _spans_of_one_trace(b, *[dict(name=f"span{i}", span_id=i, start_ns=at) for i, at in enumerate(
        [BASE_NS, BASE_NS + 10 * MINUTE_NS, BASE_NS + HOUR_NS, BASE_NS + HOUR_NS + 30 * MINUTE_NS,
         BASE_NS + 2 * HOUR_NS], start=1)], request_time=BASE_MS)


@scenario
def hourly_span_types(b):  # test_query_span_metrics_with_time_interval_and_dimensions
    starts = [("LLM", BASE_NS), ("CHAIN", BASE_NS + 10 * MINUTE_NS), ("LLM", BASE_NS + HOUR_NS),
              ("CHAIN", BASE_NS + HOUR_NS)]
    _spans_of_one_trace(b, *[dict(name=f"span{i}", span_id=i, span_type=t, start_ns=at)
                             for i, (t, at) in enumerate(starts, start=1)], request_time=BASE_MS)


@scenario
def spans_of_ok_and_error_traces(b):  # test_query_span_metrics_with_filters
    b.trace("trace1", state=TraceState.OK)
    b.trace("trace2", state=TraceState.ERROR)
    b.spans("trace1", *_typed("LLM", "LLM", "CHAIN"))
    b.spans("trace2", dict(name="span4", span_id=4, span_type="LLM", start_ns=1_300_000_000),
            dict(name="span5", span_id=5, span_type="CHAIN", start_ns=1_400_000_000))


@scenario
def spans_across_traces(b):  # test_query_span_metrics_across_multiple_traces
    for i in range(3):
        b.trace(f"trace{i}", name=f"workflow_{i}")
        b.spans(f"trace{i}",
                dict(name=f"span{i}_1", span_id=i * 10 + 1, span_type="LLM",
                     start_ns=1_000_000_000 + i * 100_000_000),
                dict(name=f"span{i}_2", span_id=i * 10 + 2, span_type="CHAIN",
                     start_ns=1_100_000_000 + i * 100_000_000))


@scenario
def span_status_filter(b):  # test_query_span_metrics_with_span_status_filter (span3 twice, as there)
    b.trace("trace1", state=TraceState.OK)
    b.trace("trace2", state=TraceState.ERROR)
    ok = _typed("LLM", "LLM", "CHAIN")
    b.spans("trace1", *[{**spec, "status": OK} for spec in ok + ok[2:]])
    b.spans("trace2", dict(name="span4", span_id=4, span_type="LLM", start_ns=1_300_000_000, status=ERROR),
            dict(name="span5", span_id=5, span_type="CHAIN", start_ns=1_400_000_000, status=ERROR))


def _named(*names_and_types):
    return [dict(name=name, span_id=i, span_type=t, start_ns=1_000_000_000 + (i - 1) * 100_000_000)
            for i, (name, t) in enumerate(names_and_types, start=1)]


@scenario
def span_names_for_filter(b):  # test_query_span_metrics_with_span_name_filter
    _spans_of_one_trace(b, *_named(("generate_response", "LLM"), ("generate_response", "LLM"),
                                   ("process_input", "CHAIN"), ("validate_output", "TOOL")))


@scenario
def span_types_for_filter(b):  # test_query_span_metrics_with_span_type_filter
    _spans_of_one_trace(b, *_typed("LLM", "TOOL", "CHAIN", "TOOL"))


@scenario
def one_span(b):  # test_query_span_metrics_invalid_filters
    _spans_of_one_trace(b, *_typed("LLM"))


@scenario
def span_names(b):  # test_query_span_metrics_count_by_span_name
    _spans_of_one_trace(b, *_named(("generate_response", "LLM"), ("generate_response", "LLM"),
                                   ("generate_response", "LLM"), ("process_input", "CHAIN"),
                                   ("process_input", "CHAIN"), ("validate_output", "TOOL")))


@scenario
def span_names_and_types(b):  # test_query_span_metrics_count_by_span_name_and_type
    _spans_of_one_trace(b, *_named(("llm_call", "LLM"), ("llm_call", "LLM"), ("tool_call", "TOOL"),
                                   ("tool_call", "TOOL"), ("chain_call", "CHAIN")))


def _timed(*rows):
    """Spans (name, type, status, latency ms), the i-th starting at i seconds (MLflow's latency tests)."""
    return [dict(name=name, span_id=i, span_type=t, status=status, start_ns=i * 1_000_000_000,
                 end_ns=i * 1_000_000_000 + ms * 1_000_000)
            for i, (name, t, status, ms) in enumerate(rows, start=1)]


@scenario
def three_span_latencies(b):  # test_query_span_metrics_latency_avg
    _spans_of_one_trace(b, *_timed(*[(f"span{i}", "LLM", None, 100 * i) for i in range(1, 4)]))


@scenario
def span_latencies_by_name(b):  # ..._latency_avg_by_span_name, ..._latency_percentiles_by_span_name
    _spans_of_one_trace(b, *_timed(
        ("generate_response", "LLM", None, 100), ("generate_response", "LLM", None, 200),
        ("generate_response", "LLM", None, 300), ("process_input", "CHAIN", None, 50),
        ("process_input", "CHAIN", None, 150)))


@scenario
def span_latencies_by_status(b):  # test_query_span_metrics_latency_by_span_status
    _spans_of_one_trace(b, *_timed(("span1", "LLM", OK, 100), ("span2", "LLM", OK, 200),
                                   ("span3", "LLM", ERROR, 50), ("span4", "LLM", ERROR, 150)))


@scenario
def five_span_latencies(b):  # ..._latency_percentiles, ..._latency_multiple_aggregations
    _spans_of_one_trace(b, *_timed(*[(f"span{i}", "LLM", None, 100 * i) for i in range(1, 6)]))


@scenario
def span_latencies_by_name_and_status(b):  # test_query_span_metrics_latency_by_span_name_and_status
    _spans_of_one_trace(b, *_timed(("generate_response", "LLM", OK, 100),
                                   ("generate_response", "LLM", OK, 200),
                                   ("generate_response", "LLM", ERROR, 300),
                                   ("process_input", "CHAIN", OK, 50)))


def _costed(*rows):
    """LLM spans (name, attributes), 100 ms apart from t=1 s."""
    return [dict(name=name, span_id=i, span_type="LLM", start_ns=1_000_000_000 + (i - 1) * 100_000_000,
                 attributes=attributes) for i, (name, attributes) in enumerate(rows, start=1)]


@scenario
def span_costs(b):  # test_query_span_metrics_cost_sum
    _spans_of_one_trace(b, *_costed(("llm_call_1", cost(0.001, 0.002, 0.003, "gpt-4")),
                                    ("llm_call_2", cost(0.002, 0.003, 0.005, "gpt-4")),
                                    ("llm_call_3", cost(0.003, 0.004, 0.007, "gpt-4"))))


@scenario
def span_costs_by_model(b):  # test_query_span_metrics_cost_by_model_name
    _spans_of_one_trace(b, *_costed(("gpt4_call_1", cost(0.01, 0.02, 0.03, "gpt-4")),
                                    ("gpt4_call_2", cost(0.01, 0.02, 0.03, "gpt-4")),
                                    ("claude_call", cost(0.005, 0.015, 0.02, "claude-3"))))


@scenario
def span_costs_avg_by_model(b):  # test_query_span_metrics_cost_avg_by_model_name
    _spans_of_one_trace(b, *_costed(("gpt4_call_1", cost(0.01, 0.02, 0.03, "gpt-4")),
                                    ("gpt4_call_2", cost(0.02, 0.03, 0.05, "gpt-4"))))


@scenario
def integer_span_costs(b):  # test_query_span_metrics_cost_multiple_aggregations
    _spans_of_one_trace(b, *_costed(*[(f"llm_call_{i}", cost(i, i, 2 * i, "gpt-4")) for i in range(1, 6)]))


@scenario
def input_output_costs(b):  # test_query_span_metrics_input_output_cost
    _spans_of_one_trace(b, *_costed(("llm_call_1", cost(0.01, 0.03, 0.04, "gpt-4")),
                                    ("llm_call_2", cost(0.02, 0.04, 0.06, "gpt-4"))))


@scenario
def span_costs_across_traces(b):  # test_query_span_metrics_cost_across_multiple_traces (span_id 1 in each)
    for i in range(3):
        b.trace(f"trace{i}")
        b.spans(f"trace{i}", *_costed(("llm_call", cost(0.01, 0.02, 0.03, "gpt-4"))))


@scenario
def ten_span_costs(b):  # test_query_span_metrics_cost_percentiles
    _spans_of_one_trace(b, *_costed(*[(f"llm_call_{i}", cost(0.005 * i, 0.005 * i, 0.01 * i, "gpt-4"))
                                      for i in range(1, 11)]))


@scenario
def span_costs_by_provider(b):  # test_query_span_metrics_cost_by_model_provider
    _spans_of_one_trace(b, *_costed(("openai_call_1", cost(0.01, 0.02, 0.03, "gpt-4", "openai")),
                                    ("openai_call_2", cost(0.015, 0.025, 0.04, "gpt-4-turbo", "openai")),
                                    ("anthropic_call", cost(0.005, 0.015, 0.02, SONNET, "anthropic"))))


@scenario
def span_costs_avg_by_provider(b):  # test_query_span_metrics_cost_avg_by_model_provider
    _spans_of_one_trace(b, *_costed(*[(f"openai_call_{i}", cost(0.01 * i, 0.01 * i, 0.02 * i, "gpt-4",
                                                                "openai")) for i in range(1, 4)]))


@scenario
def span_costs_by_model_and_provider(b):  # test_query_span_metrics_cost_by_model_name_and_provider
    _spans_of_one_trace(b, *_costed(("gpt4_call", cost(0.01, 0.02, 0.03, "gpt-4", "openai")),
                                    ("gpt4_turbo_call", cost(0.005, 0.015, 0.02, "gpt-4-turbo", "openai")),
                                    ("claude_call", cost(0.008, 0.012, 0.02, SONNET, "anthropic"))))


@scenario
def input_output_costs_by_provider(b):  # test_query_span_metrics_input_output_cost_by_provider
    _spans_of_one_trace(b, *_costed(("openai_call", cost(0.01, 0.02, 0.03, "gpt-4", "openai")),
                                    ("anthropic_call", cost(0.005, 0.015, 0.02, SONNET, "anthropic"))))


@scenario
def span_statuses_and_providers(b):  # test_query_span_metrics_count_by_span_status_and_model_provider
    rows = [("openai_ok_1", OK, "openai"), ("openai_ok_2", OK, "openai"), ("openai_error", ERROR, "openai"),
            ("anthropic_ok", OK, "anthropic"), ("anthropic_error_1", ERROR, "anthropic"),
            ("anthropic_error_2", ERROR, "anthropic"), ("no_provider_ok_1", OK, None),
            ("no_provider_ok_2", OK, None), ("no_provider_error", ERROR, None)]
    _spans_of_one_trace(b, *[dict(name=name, span_id=i, span_type="LLM" if provider else "CHAIN",
                                  status=status, start_ns=1_000_000_000 + (i - 1) * 100_000_000,
                                  attributes={SpanAttributeKey.MODEL_PROVIDER: provider} if provider else {})
                             for i, (name, status, provider) in enumerate(rows, start=1)])


def _feedback_on_one_trace(b, rows, **trace_kwargs):
    b.trace("trace1", **trace_kwargs)
    for name, value in rows:
        b.feedback("trace1", name, value)


@scenario
def three_assessment_kinds(b):  # test_query_assessment_metrics_count_no_dimensions
    b.trace("trace1")
    b.feedback("trace1", "correctness", True)
    b.feedback("trace1", "relevance", 0.8)
    b.expectation("trace1", "expected_output", "Hello World")


@scenario
def assessment_names(b):  # test_query_assessment_metrics_count_by_name
    _feedback_on_one_trace(b, [("correctness", True), ("correctness", False), ("relevance", 0.9),
                               ("relevance", 0.8), ("relevance", 0.7), ("quality", "high")])


@scenario
def assessment_values(b):  # test_query_assessment_metrics_count_by_value_and_name
    _feedback_on_one_trace(b, [("correctness", True), ("correctness", True), ("correctness", False),
                               ("quality", "high"), ("quality", "high"), ("quality", "low")])


@scenario
def hourly_assessments(b):  # test_query_assessment_metrics_with_time_interval
    b.trace("trace1", request_time=BASE_MS)
    for i, at in enumerate([BASE_MS, BASE_MS + 10 * MINUTE_MS, BASE_MS + HOUR_MS,
                            BASE_MS + HOUR_MS + 30 * MINUTE_MS, BASE_MS + 2 * HOUR_MS]):
        b.feedback("trace1", f"quality_{i}", True, create_time_ms=at)


@scenario
def hourly_assessment_names(b):  # test_query_assessment_metrics_with_time_interval_and_dimensions
    b.trace("trace1", request_time=BASE_MS)
    for at, name in [(BASE_MS, "correctness"), (BASE_MS + 10 * MINUTE_MS, "relevance"),
                     (BASE_MS + HOUR_MS, "correctness"), (BASE_MS + HOUR_MS, "relevance")]:
        b.feedback("trace1", name, True, create_time_ms=at)


@scenario
def assessments_of_ok_and_error_traces(b):  # test_query_assessment_metrics_with_filters
    b.trace("trace1", state=TraceState.OK)
    b.trace("trace2", state=TraceState.ERROR)
    for i in range(3):
        b.feedback("trace1", f"quality_{i}", True)
    for i in range(2):
        b.feedback("trace2", f"error_check_{i}", False)


@scenario
def assessments_across_traces(b):  # test_query_assessment_metrics_across_multiple_traces
    for i in range(3):
        b.trace(f"trace{i}", name=f"workflow_{i}")
        b.feedback(f"trace{i}", "correctness", True)
        b.feedback(f"trace{i}", "relevance", 0.9)


@scenario
def numeric_assessments(b):  # test_query_assessment_value_avg_by_name
    _feedback_on_one_trace(b, [("accuracy", 0.8), ("accuracy", 0.9), ("accuracy", 0.85), ("precision", 0.7),
                               ("precision", 0.75), ("quality", "high")])


@scenario
def boolean_assessments(b):  # test_query_assessment_value_with_boolean_values
    _feedback_on_one_trace(b, [("correctness", v) for v in (True, True, False, True)])


@scenario
def yes_no_assessments(b):  # test_query_assessment_value_with_yes_no_string_values
    _feedback_on_one_trace(b, [("quality", v) for v in (CategoricalRating.YES, CategoricalRating.YES,
                                                         CategoricalRating.NO, CategoricalRating.YES,
                                                         CategoricalRating.UNKNOWN)])


@scenario
def assessment_percentiles(b):  # test_query_assessment_value_percentiles
    _feedback_on_one_trace(b, [("accuracy", v) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
                           + [("score", v) for v in (10.0, 20.0, 30.0)])


@scenario
def mixed_assessment_types(b):  # test_query_assessment_value_mixed_types
    _feedback_on_one_trace(b, [("rating", 5.0), ("rating", 4.5), ("rating", 3.0), ("status", "good"),
                               ("status", "bad"), ("passed", True), ("passed", False), ("passed", True)])


@scenario
def five_scores(b):  # test_query_assessment_value_multiple_aggregations
    _feedback_on_one_trace(b, [("score", v) for v in (10.0, 20.0, 30.0, 40.0, 50.0)])


NUMERIC_ROWS = [("accuracy", 0.8), ("accuracy", 0.9), ("precision", 0.7), ("recall", 0.85)]


@scenario
def numeric_feedback(b):  # test_query_assessment_value_no_dimensions[Feedback]
    _feedback_on_one_trace(b, NUMERIC_ROWS)


@scenario
def numeric_expectations(b):  # test_query_assessment_value_no_dimensions[Expectation]
    b.trace("trace1")
    for name, value in NUMERIC_ROWS:
        b.expectation("trace1", name, value, source=CODE)


@scenario
def hourly_numeric_assessments(b):  # test_query_assessment_value_with_time_bucket
    b.trace("trace1", request_time=BASE_MS)
    for at, name, value in [(BASE_MS, "accuracy", 0.8), (BASE_MS + 10 * MINUTE_MS, "accuracy", 0.9),
                            (BASE_MS + HOUR_MS, "precision", 0.7),
                            (BASE_MS + HOUR_MS + 30 * MINUTE_MS, "precision", 0.75),
                            (BASE_MS + 2 * HOUR_MS, "recall", 0.95)]:
        b.feedback("trace1", name, value, create_time_ms=at)


JSON_STRING_ROWS = [("string_score", '"test"'), ("list_score", "[1, 2, 3]"),
                    ("dict_score", '{"a": 1, "b": 2}')]


@scenario
def json_string_feedback(b):  # test_query_assessment_invalid_values[Feedback]
    _feedback_on_one_trace(b, JSON_STRING_ROWS)


@scenario
def json_string_expectations(b):  # test_query_assessment_invalid_values[Expectation]
    b.trace("trace1")
    for name, value in JSON_STRING_ROWS:
        b.expectation("trace1", name, value)


@scenario
def null_and_numeric_feedback(b):  # test_query_assessment_value_with_null_value
    b.trace("trace1")
    b.feedback("trace1", "score", None,
               error=AssessmentError(error_message="Null value", error_code="NULL_VALUE"))
    b.feedback("trace1", "score", 12)


@scenario
def assessments_for_name_filter(b):  # test_query_assessment_value_with_assessment_name_filter
    _feedback_on_one_trace(b, NUMERIC_ROWS)


@scenario
def feedback_and_expectations(b):  # test_query_assessment_with_type_filter
    b.trace("trace1")
    for i in range(3):
        b.feedback("trace1", f"feedback_{i}", 0.8)
    for i in range(2):
        b.expectation("trace1", f"expectation_{i}", "expected")


@scenario
def feedback_and_expectations_by_name(b):  # test_query_assessment_with_combined_name_and_type_filters
    _feedback_on_one_trace(b, [("accuracy", 0.8), ("accuracy", 0.9), ("precision", 0.7)])
    b.expectation("trace1", "accuracy", "expected_value")
    b.expectation("trace1", "recall", "expected_value")


@scenario
def one_assessment(b):  # test_query_assessments_metrics_invalid_filters
    _feedback_on_one_trace(b, [("accuracy", 0.8)])


# Not in MLflow's file: semantics read from sql_trace_metrics_utils.py.

@scenario
def sub_millisecond_span_latencies(b):  # span latency is (end - start) // 1e6: whole milliseconds
    durations = [("fast", 900_000), ("call", 100_600_000), ("call", 200_400_000), ("call", 300_999_999)]
    _spans_of_one_trace(b, *[dict(name=name, span_id=i, start_ns=i * 10**9, end_ns=i * 10**9 + ns)
                             for i, (name, ns) in enumerate(durations, start=1)])


@scenario
def spans_hours_after_their_trace(b):  # counts are windowed by the trace's time, costs by the span's start
    starts = [BASE_NS + 2 * HOUR_NS, BASE_NS + 2 * HOUR_NS + 10 * MINUTE_NS, BASE_NS + 3 * HOUR_NS + 500_000]
    _spans_of_one_trace(b, *[dict(name=f"llm_call_{i}", span_id=i, start_ns=at, end_ns=at + 500_000_000,
                                  attributes=cost(0.01, 0.02, 0.03, "gpt-4", "openai"))
                             for i, at in enumerate(starts, start=1)], request_time=BASE_MS)


@scenario
def mixed_case_names(b):  # dimensions sort by bytes: upper case before "_" before lower case
    for i, name in enumerate(["beta", "Alpha", "alpha", "_hidden", "Beta", "alpha"], start=1):
        b.trace(f"trace{i}", name=name, duration_ms=10 * i, request_time=BASE_MS)
    # Within the trace's time: a span starting before it would move its timestamp (log_spans keeps the
    # earliest start unless the batch brings tokens, cost or a session).
    names_and_types = [("b", "LLM"), ("B", "TOOL"), ("a", "llm"), ("_", "CHAIN")]
    b.spans("trace1", *[dict(name=name, span_id=i, start_ns=BASE_NS + i, end_ns=BASE_NS + 5_000_000,
                             span_type=t) for i, (name, t) in enumerate(names_and_types, start=1)])
    for name in ["b", "B", "a", "A"]:
        b.feedback("trace1", name, 1)


@scenario
def overridden_feedback(b):  # an overridden assessment (valid=False) is not counted
    b.trace("trace1")
    b.trace("trace2")
    first = b.feedback("trace1", "helpful", True)
    b.feedback("trace1", "helpful", False, overrides=first.assessment_id)
    b.feedback("trace2", "helpful", True)
    b.feedback("trace2", "score", 3)


@scenario
def reserved_keys(b):  # trace.tag.mlflow.traceName, trace.metadata.mlflow.trace.session / tokenUsage: columns
    rows = [("trace1", "chat", "s-1", tokens(10, 5, 15)), ("trace2", "chat", "s-1", tokens(20, 5, 25)),
            ("trace3", "search", "s-2", tokens(10, 5, 15)), ("trace4", "search", None, None)]
    for short_id, name, session, usage in rows:
        b.trace(short_id, name=name, session=session, tokens=usage,
                tags={"env": "prod" if session else "dev"},
                metadata={"mlflow.trace.user": "alice"} if name == "chat" else {})
        b.spans(short_id, dict(name="root", span_id=1, span_type="CHAIN"),
                dict(name="llm", span_id=2, parent_id=1, attributes=cost(0.1, 0.2, 0.3, "gpt-4")))
        b.feedback(short_id, "helpful", session == "s-1")


@scenario
def trace_costs(b):  # trace.metadata.`mlflow.trace.cost` matches the trace's cost columns (log_spans' sums)
    for short_id, costs in [("trace1", [(0.1, 0.2, 0.3)]), ("trace2", [(0.1, 0.2, 0.3), (0.2, 0.4, 0.6)])]:
        b.trace(short_id)
        b.spans(short_id, dict(name="root", span_id=1, span_type="CHAIN"),
                *[dict(name="llm", span_id=i, parent_id=1, attributes=cost(*c, "gpt-4"))
                  for i, c in enumerate(costs, start=2)])


@scenario
def run_linked_traces(b):  # trace.metadata.mlflow.sourceRun matches traces linked with link_traces_to_run too
    run = b.store.create_run(b.experiment_id, "tester", BASE_MS, [], "linked")
    b.trace("trace1", metadata={SOURCE_RUN: run.info.run_id})
    b.trace("trace2")
    b.trace("trace3")
    b.store.link_traces_to_run([b.trace_id("trace2")], run.info.run_id)
    b.feedback("trace2", "helpful", True)


@scenario
def no_traces(b):  # an experiment with nothing in it
    pass


# ----------------------------------------------------------------------------------------------------------
# The store, its warehouse, and the comparison.

@dataclass
class Stores:
    mlflow: SqlAlchemyStore
    uri: str
    experiment_ids: dict[str, str]
    warehouse_path: Path


@pytest.fixture(scope="module")
def stores(empty_store_file: Path, tmp_path_factory) -> Stores:
    """Every scenario in its own experiment of one SQLite store, written through MLflow's store API."""
    root = tmp_path_factory.mktemp("trace-metrics-mlflow")
    path = Path(shutil.copyfile(empty_store_file, root / "mlflow.db"))
    uri = f"sqlite:///{path}"
    store = SqlAlchemyStore(uri, str(root / "artifacts"))
    experiment_ids = {}
    for name, build in SCENARIOS.items():
        experiment_ids[name] = store.create_experiment(name)
        build(ExperimentBuilder(store, experiment_ids[name], name))
    return Stores(store, uri, experiment_ids, root / "warehouse.duckdb")


@pytest.fixture(scope="module")
def extracted(stores: Stores) -> Path:
    """The store copied once into a warehouse."""
    extract_traces(SqlTrackingStore(stores.uri), str(stores.warehouse_path))
    return stores.warehouse_path


@pytest.fixture(scope="module")
def rolled_up(extracted: Path) -> Path:
    """A copy of the warehouse with the rollups written, as the insights_rollups asset writes them."""
    from assets.insights.rollups import write_rollups
    from resources.warehouse import sqlalchemy_engine

    target = Path(shutil.copyfile(extracted, extracted.with_name("rolled-up.duckdb")))
    engine = sqlalchemy_engine(str(target), read_only=False)
    with engine.begin() as conn:
        write_rollups(conn)
    engine.dispose()
    return target


@pytest.fixture(scope="module", params=["from the tables", "span view summed from the hourly rollup"])
def warehouse(extracted: Path, rolled_up: Path, request):
    """Our `query_trace_metrics` on the warehouse, whose span counts, latencies and costs are read from the spans
    or, with the rollups written, summed from `mlflow_spans_hourly`: every case is asked of both."""
    from assets.insights.trace_metrics import WarehouseTraceStore

    return WarehouseTraceStore(str(extracted if request.param == "from the tables" else rolled_up))


@dataclass
class Case:
    id: str
    scenario: str | tuple[str, ...]
    kwargs: dict
    expected: list[tuple[dict, dict]] | None = None  # MLflow's test's literal answer: (dimensions, values)
    error: str | None = None  # for a bad request: a regex of MLflow's message (pytest.raises(match=...))
    marks: list = field(default_factory=list)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def query(view_type: MetricViewType, metric_name: str, *aggregations: MetricAggregation, **kwargs) -> dict:
    return dict(view_type=view_type, metric_name=metric_name, aggregations=list(aggregations), **kwargs)


def rows(points) -> list[tuple]:
    return [(p.metric_name, p.dimensions, p.values) for p in points]


def approx_rows(metric_rows: list[tuple]) -> list[tuple]:
    return [(metric, dimensions, {k: pytest.approx(v, rel=1e-9) for k, v in values.items()})
            for metric, dimensions, values in metric_rows]


def experiment_ids(stores: Stores, case: Case) -> list[str]:
    names = (case.scenario,) if isinstance(case.scenario, str) else case.scenario
    return [stores.experiment_ids[name] for name in names]


def check(case: Case, stores: Stores, warehouse) -> None:
    """MLflow gives its test's literal answer (or raises its error), and the warehouse gives MLflow's."""
    assert (case.expected is None) != (case.error is None), "a case has a literal answer or an error"
    kwargs = dict(experiment_ids=experiment_ids(stores, case), **case.kwargs)
    if case.error is not None:
        with pytest.raises(MlflowException, match=case.error) as theirs:
            stores.mlflow.query_trace_metrics(**kwargs)
        with pytest.raises(MlflowException) as ours:
            warehouse.query_trace_metrics(**kwargs)
        assert (ours.value.error_code, ours.value.message) == (theirs.value.error_code, theirs.value.message)
        return
    theirs = rows(stores.mlflow.query_trace_metrics(**kwargs))
    if case.expected is not None:
        metric = case.kwargs["metric_name"]
        assert theirs == approx_rows([(metric, dimensions, values) for dimensions, values in case.expected])
    assert rows(warehouse.query_trace_metrics(**kwargs)) == approx_rows(theirs)


def cases(*all_cases: Case) -> list:
    return [case.param() for case in all_cases]


# ----------------------------------------------------------------------------------------------------------
# Traces view.

TRACE_COUNT, SESSION_COUNT, LATENCY = "trace_count", "session_count", "latency"  # TraceMetricKey's values
TOTAL_TOKENS = TraceMetricKey.TOTAL_TOKENS
TB = "time_bucket"
H0, H1, H2, H3 = (bucket(BASE_MS + hour * HOUR_MS) for hour in range(4))  # 00:00 ... 03:00 on 2020-01-01
HOURS_0_TO_3 = dict(time_interval_seconds=3600, start_time_ms=BASE_MS, end_time_ms=BASE_MS + 3 * HOUR_MS)


@pytest.mark.parametrize("case", cases(
    Case("trace_count", "five_traces", query(TRACES, TRACE_COUNT, COUNT), [({}, {"COUNT": 5})]),
    Case("traces_per_status", "statuses", query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_STATUS]),
         [({TRACE_STATUS: "ERROR"}, {"COUNT": 2}), ({TRACE_STATUS: "OK"}, {"COUNT": 3})]),
    Case("traces_per_name", "names", query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"COUNT": 3}), ({TRACE_NAME: "workflow_b"}, {"COUNT": 2})]),
    Case("traces_per_status_and_name", "statuses_and_names",
         query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_STATUS, TRACE_NAME]),
         [({TRACE_STATUS: "ERROR", TRACE_NAME: "workflow_a"}, {"COUNT": 1}),
          ({TRACE_STATUS: "ERROR", TRACE_NAME: "workflow_b"}, {"COUNT": 1}),
          ({TRACE_STATUS: "OK", TRACE_NAME: "workflow_a"}, {"COUNT": 2}),
          ({TRACE_STATUS: "OK", TRACE_NAME: "workflow_b"}, {"COUNT": 1})]),
    Case("sessions_of_traces_that_have_one", "sessions", query(TRACES, SESSION_COUNT, COUNT),
         [({}, {"COUNT": 3})]),
    Case("sessions_of_one_source_run", "sessions_and_source_runs",
         query(TRACES, SESSION_COUNT, COUNT, filters=[f"trace.metadata.`{SOURCE_RUN}` = 'run-1'"]),
         [({}, {"COUNT": 2})]),
    Case("traces_with_status_ok", "statuses",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.status = 'OK'"]), [({}, {"COUNT": 3})]),
    Case("traces_with_status_error", "statuses",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.status = 'ERROR'"]), [({}, {"COUNT": 2})]),
    Case("traces_of_source_run_123", "source_runs",
         query(TRACES, TRACE_COUNT, COUNT, filters=[f"trace.metadata.`{SOURCE_RUN}` = 'run_123'"]),
         [({}, {"COUNT": 2})]),
    Case("traces_of_source_run_456", "source_runs",
         query(TRACES, TRACE_COUNT, COUNT, filters=[f"trace.metadata.`{SOURCE_RUN}` = 'run_456'"]),
         [({}, {"COUNT": 2})]),
    Case("filters_are_anded", "statuses_and_source_runs",
         query(TRACES, TRACE_COUNT, COUNT,
               filters=["trace.status = 'OK'", f"trace.metadata.`{SOURCE_RUN}` = 'run_123'"]),
         [({}, {"COUNT": 2})]),
    Case("traces_with_tag", "model_version_tags",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.tag.tag1 = 'value1'"]), [({}, {"COUNT": 5})]),
    Case("traces_with_dotted_tag_v1", "model_version_tags",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.tag.`model.version` = 'model_v1'"]),
         [({}, {"COUNT": 2})]),
    Case("traces_with_dotted_tag_v2", "model_version_tags",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.tag.`model.version` = 'model_v2'"]),
         [({}, {"COUNT": 2})]),
))
def test_trace_and_session_counts_per_status_name_and_filter(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


@pytest.mark.parametrize("case", cases(
    Case("latency_avg_per_name", "latencies", query(TRACES, LATENCY, AVG, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"AVG": 200.0}), ({TRACE_NAME: "workflow_b"}, {"AVG": 200.0})]),
    *[Case(f"latency_p{p:g}_per_name", "latencies_for_percentiles",
           query(TRACES, LATENCY, pct(p), dimensions=[TRACE_NAME]),
           [({TRACE_NAME: "workflow_a"}, {f"P{p}": np.percentile([100.0, 200.0, 300.0], p)}),
            ({TRACE_NAME: "workflow_b"}, {f"P{p}": np.percentile([100.0, 200.0], p)})]) for p in PERCENTILES],
    Case("percentiles_of_identical_latencies", "identical_latencies",
         query(TRACES, LATENCY, AVG, pct(50), pct(95), dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"AVG": 50.0, "P50": 50.0, "P95": 50.0})]),
    Case("latency_avg_p95_p99", "five_latencies", query(TRACES, LATENCY, AVG, pct(95), pct(99),
                                                        dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"AVG": 300.0, "P95": np.percentile([100, 200, 300, 400, 500], 95),
                                        "P99": np.percentile([100, 200, 300, 400, 500], 99)})]),
    Case("total_tokens_sum_per_name", "token_usage",
         query(TRACES, TOTAL_TOKENS, SUM, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"SUM": 675}), ({TRACE_NAME: "workflow_b"}, {"SUM": 825})]),
    Case("total_tokens_avg_per_name", "token_usage",
         query(TRACES, TOTAL_TOKENS, AVG, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"AVG": 225.0}), ({TRACE_NAME: "workflow_b"}, {"AVG": 412.5})]),
    Case("total_tokens_percentiles_per_name", "token_usage",
         query(TRACES, TOTAL_TOKENS, *[pct(p) for p in INT_PERCENTILES], dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {f"P{p}": np.percentile([150, 225, 300], p) for p in INT_PERCENTILES}),
          ({TRACE_NAME: "workflow_b"}, {f"P{p}": np.percentile([375, 450], p) for p in INT_PERCENTILES})]),
    Case("total_tokens_sum_and_avg", "token_usage", query(TRACES, TOTAL_TOKENS, SUM, AVG),
         [({}, {"SUM": 1500, "AVG": 300.0})]),
    Case("no_token_usage_no_points", "no_token_usage", query(TRACES, TOTAL_TOKENS, SUM), []),
    Case("cache_read_tokens_sum_per_name", "cached_token_usage",
         query(TRACES, TraceMetricKey.CACHE_READ_INPUT_TOKENS, SUM, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"SUM": 90}), ({TRACE_NAME: "workflow_b"}, {"SUM": 180})]),
    Case("cache_creation_tokens_sum_per_name", "cached_token_usage",
         query(TRACES, TraceMetricKey.CACHE_CREATION_INPUT_TOKENS, SUM, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"SUM": 30}), ({TRACE_NAME: "workflow_b"}, {"SUM": 90})]),
    Case("cache_read_tokens_sum_and_avg", "cached_token_usage",
         query(TRACES, TraceMetricKey.CACHE_READ_INPUT_TOKENS, SUM, AVG), [({}, {"SUM": 270, "AVG": 54.0})]),
    # Not in MLflow's file: MIN and MAX, and the input/output token metrics.
    Case("latency_min_max_per_name", "latencies", query(TRACES, LATENCY, MIN, MAX, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"MIN": 100, "MAX": 300}),
          ({TRACE_NAME: "workflow_b"}, {"MIN": 150, "MAX": 250})]),
    Case("input_tokens_every_aggregation", "cached_token_usage",
         query(TRACES, TraceMetricKey.INPUT_TOKENS, SUM, AVG, MIN, MAX, pct(50)),
         [({}, {"SUM": 1000, "AVG": 200.0, "MIN": 100, "MAX": 300, "P50": 200.0})]),
    Case("output_tokens_min_max_per_name", "cached_token_usage",
         query(TRACES, TraceMetricKey.OUTPUT_TOKENS, MIN, MAX, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "workflow_a"}, {"MIN": 50, "MAX": 100}),
          ({TRACE_NAME: "workflow_b"}, {"MIN": 125, "MAX": 150})]),
    Case("cache_creation_tokens_min_max", "cached_token_usage",
         query(TRACES, TraceMetricKey.CACHE_CREATION_INPUT_TOKENS, MIN, MAX), [({}, {"MIN": 0, "MAX": 50})]),
))
def test_trace_latency_and_tokens_aggregate_like_mlflow(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


# ----------------------------------------------------------------------------------------------------------
# Spans view.

SPAN_COUNT, SPAN_LATENCY = SpanMetricKey.SPAN_COUNT, SpanMetricKey.LATENCY
TOTAL_COST, INPUT_COST, OUTPUT_COST = "total_cost", "input_cost", "output_cost"  # SpanMetricKey's values


@pytest.mark.parametrize("case", cases(
    Case("span_count", "five_spans", query(SPANS, SPAN_COUNT, COUNT), [({}, {"COUNT": 5})]),
    Case("spans_per_type", "span_types", query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE]),
         [({SPAN_TYPE: "CHAIN"}, {"COUNT": 2}), ({SPAN_TYPE: "LLM"}, {"COUNT": 3}),
          ({SPAN_TYPE: "TOOL"}, {"COUNT": 1})]),
    Case("spans_per_status", "span_statuses", query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_STATUS]),
         [({SPAN_STATUS: "ERROR"}, {"COUNT": 2}), ({SPAN_STATUS: "OK"}, {"COUNT": 3})]),
    Case("spans_of_ok_traces", "spans_of_ok_and_error_traces",
         query(SPANS, SPAN_COUNT, COUNT, filters=["trace.status = 'OK'"]), [({}, {"COUNT": 3})]),
    Case("spans_of_error_traces_per_type", "spans_of_ok_and_error_traces",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE], filters=["trace.status = 'ERROR'"]),
         [({SPAN_TYPE: "CHAIN"}, {"COUNT": 1}), ({SPAN_TYPE: "LLM"}, {"COUNT": 1})]),
    Case("spans_per_type_across_traces", "spans_across_traces",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE]),
         [({SPAN_TYPE: "CHAIN"}, {"COUNT": 3}), ({SPAN_TYPE: "LLM"}, {"COUNT": 3})]),
    Case("ok_spans_per_type", "span_status_filter",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE], filters=["span.status = 'OK'"]),
         [({SPAN_TYPE: "CHAIN"}, {"COUNT": 1}), ({SPAN_TYPE: "LLM"}, {"COUNT": 2})]),
    Case("spans_with_name", "span_names_for_filter",
         query(SPANS, SPAN_COUNT, COUNT, filters=["span.name = 'generate_response'"]), [({}, {"COUNT": 2})]),
    Case("spans_with_type", "span_types_for_filter",
         query(SPANS, SPAN_COUNT, COUNT, filters=["span.type = 'TOOL'"]), [({}, {"COUNT": 2})]),
    Case("spans_per_name", "span_names", query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_NAME]),
         [({SPAN_NAME: "generate_response"}, {"COUNT": 3}), ({SPAN_NAME: "process_input"}, {"COUNT": 2}),
          ({SPAN_NAME: "validate_output"}, {"COUNT": 1})]),
    Case("tool_spans_per_name", "span_names",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_NAME], filters=["span.type = 'TOOL'"]),
         [({SPAN_NAME: "validate_output"}, {"COUNT": 1})]),
    Case("spans_per_name_and_type", "span_names_and_types",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_NAME, SPAN_TYPE]),
         [({SPAN_NAME: "chain_call", SPAN_TYPE: "CHAIN"}, {"COUNT": 1}),
          ({SPAN_NAME: "llm_call", SPAN_TYPE: "LLM"}, {"COUNT": 2}),
          ({SPAN_NAME: "tool_call", SPAN_TYPE: "TOOL"}, {"COUNT": 2})]),
    Case("spans_per_status_and_provider_skip_no_provider", "span_statuses_and_providers",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_STATUS, MODEL_PROVIDER]),
         [({SPAN_STATUS: "ERROR", MODEL_PROVIDER: "anthropic"}, {"COUNT": 2}),
          ({SPAN_STATUS: "ERROR", MODEL_PROVIDER: "openai"}, {"COUNT": 1}),
          ({SPAN_STATUS: "OK", MODEL_PROVIDER: "anthropic"}, {"COUNT": 1}),
          ({SPAN_STATUS: "OK", MODEL_PROVIDER: "openai"}, {"COUNT": 2})]),
    # Not in MLflow's file: spans per model name (the spans without one are left out); an UNSET status.
    Case("spans_per_unset_status", "five_spans", query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_STATUS]),
         [({SPAN_STATUS: "UNSET"}, {"COUNT": 5})]),
    Case("spans_per_model", "span_costs_by_model_and_provider",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[MODEL_NAME]),
         [({MODEL_NAME: "claude-3-5-sonnet"}, {"COUNT": 1}), ({MODEL_NAME: "gpt-4"}, {"COUNT": 1}),
          ({MODEL_NAME: "gpt-4-turbo"}, {"COUNT": 1})]),
    Case("span_latency_avg", "three_span_latencies", query(SPANS, SPAN_LATENCY, AVG), [({}, {"AVG": 200.0})]),
    Case("span_latency_avg_per_name", "span_latencies_by_name",
         query(SPANS, SPAN_LATENCY, AVG, dimensions=[SPAN_NAME]),
         [({SPAN_NAME: "generate_response"}, {"AVG": 200.0}),
          ({SPAN_NAME: "process_input"}, {"AVG": 100.0})]),
    Case("span_latency_avg_per_status", "span_latencies_by_status",
         query(SPANS, SPAN_LATENCY, AVG, dimensions=[SPAN_STATUS]),
         [({SPAN_STATUS: "ERROR"}, {"AVG": 100.0}), ({SPAN_STATUS: "OK"}, {"AVG": 150.0})]),
    *[Case(f"span_latency_p{p:g}", "five_span_latencies", query(SPANS, SPAN_LATENCY, pct(p)),
           [({}, {f"P{p}": np.percentile([100.0, 200.0, 300.0, 400.0, 500.0], p)})]) for p in PERCENTILES],
    Case("span_latency_p50_per_name", "span_latencies_by_name",
         query(SPANS, SPAN_LATENCY, pct(50.0), dimensions=[SPAN_NAME]),
         [({SPAN_NAME: "generate_response"}, {"P50.0": 200.0}),
          ({SPAN_NAME: "process_input"}, {"P50.0": 100.0})]),
    Case("span_latency_avg_p50_p95", "five_span_latencies", query(SPANS, SPAN_LATENCY, AVG, pct(50), pct(95)),
         [({}, {"AVG": 300.0, "P50": 300.0, "P95": np.percentile([100, 200, 300, 400, 500], 95)})]),
    Case("span_latency_avg_per_name_and_status", "span_latencies_by_name_and_status",
         query(SPANS, SPAN_LATENCY, AVG, dimensions=[SPAN_NAME, SPAN_STATUS]),
         [({SPAN_NAME: "generate_response", SPAN_STATUS: "ERROR"}, {"AVG": 300.0}),
          ({SPAN_NAME: "generate_response", SPAN_STATUS: "OK"}, {"AVG": 150.0}),
          ({SPAN_NAME: "process_input", SPAN_STATUS: "OK"}, {"AVG": 50.0})]),
    # Not in MLflow's file: MIN/MAX, and latency truncated to whole milliseconds ((end - start) // 1e6):
    # 0.9 ms counts as 0, 100.6 as 100, 200.4 as 200, 300.999999 as 300.
    Case("span_latency_min_max_per_status", "span_latencies_by_status",
         query(SPANS, SPAN_LATENCY, MIN, MAX, dimensions=[SPAN_STATUS]),
         [({SPAN_STATUS: "ERROR"}, {"MIN": 50, "MAX": 150}),
          ({SPAN_STATUS: "OK"}, {"MIN": 100, "MAX": 200})]),
    Case("span_latency_whole_milliseconds", "sub_millisecond_span_latencies",
         query(SPANS, SPAN_LATENCY, AVG, MIN, MAX, pct(50), dimensions=[SPAN_NAME]),
         [({SPAN_NAME: "call"}, {"AVG": 200.0, "MIN": 100, "MAX": 300, "P50": 200.0}),
          ({SPAN_NAME: "fast"}, {"AVG": 0.0, "MIN": 0, "MAX": 0, "P50": 0.0})]),
))
def test_span_counts_and_latency_per_name_type_status_and_provider(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


@pytest.mark.parametrize("case", cases(
    Case("total_cost_sum", "span_costs", query(SPANS, TOTAL_COST, SUM), [({}, {"SUM": 0.015})]),
    Case("total_cost_sum_per_model", "span_costs_by_model",
         query(SPANS, TOTAL_COST, SUM, dimensions=[MODEL_NAME]),
         [({MODEL_NAME: "claude-3"}, {"SUM": 0.02}), ({MODEL_NAME: "gpt-4"}, {"SUM": 0.06})]),
    Case("total_cost_avg_per_model", "span_costs_avg_by_model",
         query(SPANS, TOTAL_COST, AVG, dimensions=[MODEL_NAME]), [({MODEL_NAME: "gpt-4"}, {"AVG": 0.04})]),
    Case("total_cost_sum_and_avg", "integer_span_costs", query(SPANS, TOTAL_COST, SUM, AVG),
         [({}, {"SUM": 30.0, "AVG": 6.0})]),
    Case("input_cost_sum", "input_output_costs", query(SPANS, INPUT_COST, SUM), [({}, {"SUM": 0.03})]),
    Case("output_cost_sum", "input_output_costs", query(SPANS, OUTPUT_COST, SUM), [({}, {"SUM": 0.07})]),
    Case("total_cost_per_model_across_traces", "span_costs_across_traces",
         query(SPANS, TOTAL_COST, SUM, dimensions=[MODEL_NAME]), [({MODEL_NAME: "gpt-4"}, {"SUM": 0.09})]),
    *[Case(f"total_cost_p{p}", "ten_span_costs", query(SPANS, TOTAL_COST, pct(p)),
           [({}, {f"P{p}": np.percentile([0.01 * i for i in range(1, 11)], p)})]) for p in (50, 90, 95, 99)],
    Case("total_cost_sum_per_provider", "span_costs_by_provider",
         query(SPANS, TOTAL_COST, SUM, dimensions=[MODEL_PROVIDER]),
         [({MODEL_PROVIDER: "anthropic"}, {"SUM": 0.02}), ({MODEL_PROVIDER: "openai"}, {"SUM": 0.07})]),
    Case("total_cost_avg_per_provider", "span_costs_avg_by_provider",
         query(SPANS, TOTAL_COST, AVG, dimensions=[MODEL_PROVIDER]),
         [({MODEL_PROVIDER: "openai"}, {"AVG": 0.04})]),
    Case("total_cost_sum_per_model_and_provider", "span_costs_by_model_and_provider",
         query(SPANS, TOTAL_COST, SUM, dimensions=[MODEL_NAME, MODEL_PROVIDER]),
         [({MODEL_NAME: "claude-3-5-sonnet", MODEL_PROVIDER: "anthropic"}, {"SUM": 0.02}),
          ({MODEL_NAME: "gpt-4", MODEL_PROVIDER: "openai"}, {"SUM": 0.03}),
          ({MODEL_NAME: "gpt-4-turbo", MODEL_PROVIDER: "openai"}, {"SUM": 0.02})]),
    Case("input_cost_sum_per_provider", "input_output_costs_by_provider",
         query(SPANS, INPUT_COST, SUM, dimensions=[MODEL_PROVIDER]),
         [({MODEL_PROVIDER: "anthropic"}, {"SUM": 0.005}), ({MODEL_PROVIDER: "openai"}, {"SUM": 0.01})]),
    Case("output_cost_sum_per_provider", "input_output_costs_by_provider",
         query(SPANS, OUTPUT_COST, SUM, dimensions=[MODEL_PROVIDER]),
         [({MODEL_PROVIDER: "anthropic"}, {"SUM": 0.015}), ({MODEL_PROVIDER: "openai"}, {"SUM": 0.02})]),
    # Not in MLflow's file: MIN/MAX of costs, a percentile per provider.
    Case("input_cost_min_max_per_model", "span_costs_by_model_and_provider",
         query(SPANS, INPUT_COST, MIN, MAX, dimensions=[MODEL_NAME]),
         [({MODEL_NAME: "claude-3-5-sonnet"}, {"MIN": 0.008, "MAX": 0.008}),
          ({MODEL_NAME: "gpt-4"}, {"MIN": 0.01, "MAX": 0.01}),
          ({MODEL_NAME: "gpt-4-turbo"}, {"MIN": 0.005, "MAX": 0.005})]),
    Case("output_cost_p75_per_provider", "span_costs_by_provider",
         query(SPANS, OUTPUT_COST, pct(75), dimensions=[MODEL_PROVIDER]),
         [({MODEL_PROVIDER: "anthropic"}, {"P75": 0.015}),
          ({MODEL_PROVIDER: "openai"}, {"P75": np.percentile([0.02, 0.025], 75)})]),
))
def test_span_costs_per_model_and_provider(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


# ----------------------------------------------------------------------------------------------------------
# Assessments view.

ASSESSMENT_COUNT, ASSESSMENT_VALUE_METRIC = (AssessmentMetricKey.ASSESSMENT_COUNT,
                                             AssessmentMetricKey.ASSESSMENT_VALUE)


@pytest.mark.parametrize("case", cases(
    Case("assessment_count", "three_assessment_kinds", query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT),
         [({}, {"COUNT": 3})]),
    Case("assessments_per_name", "assessment_names",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "correctness"}, {"COUNT": 2}), ({ASSESSMENT_NAME: "quality"}, {"COUNT": 1}),
          ({ASSESSMENT_NAME: "relevance"}, {"COUNT": 3})]),
    Case("assessments_per_name_and_json_value", "assessment_values",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_NAME, ASSESSMENT_VALUE]),
         [({ASSESSMENT_NAME: "correctness", ASSESSMENT_VALUE: "false"}, {"COUNT": 1}),
          ({ASSESSMENT_NAME: "correctness", ASSESSMENT_VALUE: "true"}, {"COUNT": 2}),
          ({ASSESSMENT_NAME: "quality", ASSESSMENT_VALUE: '"high"'}, {"COUNT": 2}),
          ({ASSESSMENT_NAME: "quality", ASSESSMENT_VALUE: '"low"'}, {"COUNT": 1})]),
    Case("assessments_of_ok_traces", "assessments_of_ok_and_error_traces",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["trace.status = 'OK'"]), [({}, {"COUNT": 3})]),
    Case("assessments_of_error_traces", "assessments_of_ok_and_error_traces",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["trace.status = 'ERROR'"]),
         [({}, {"COUNT": 2})]),
    Case("assessments_per_name_across_traces", "assessments_across_traces",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "correctness"}, {"COUNT": 3}), ({ASSESSMENT_NAME: "relevance"}, {"COUNT": 3})]),
    Case("feedback_count", "feedback_and_expectations",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["assessment.type = 'feedback'"]),
         [({}, {"COUNT": 3})]),
    Case("expectation_count", "feedback_and_expectations",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["assessment.type = 'expectation'"]),
         [({}, {"COUNT": 2})]),
    Case("feedback_named_accuracy", "feedback_and_expectations_by_name",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT,
               filters=["assessment.type = 'feedback'", "assessment.name = 'accuracy'"]),
         [({}, {"COUNT": 2})]),
    Case("value_avg_per_name_skips_strings", "numeric_assessments",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "accuracy"}, {"AVG": 0.85}), ({ASSESSMENT_NAME: "precision"}, {"AVG": 0.725})]),
    Case("booleans_average_as_one_and_zero", "boolean_assessments",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "correctness"}, {"AVG": 0.75})]),
    Case("yes_no_average_as_one_and_zero", "yes_no_assessments",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "quality"}, {"AVG": 0.75})]),
    *[Case(f"value_p{p:g}_per_name", "assessment_percentiles",
           query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, pct(p), dimensions=[ASSESSMENT_NAME]),
           [({ASSESSMENT_NAME: "accuracy"}, {f"P{p}": np.percentile([0.1, 0.2, 0.3, 0.4, 0.5], p)}),
            ({ASSESSMENT_NAME: "score"}, {f"P{p}": np.percentile([10.0, 20.0, 30.0], p)})])
      for p in PERCENTILES],
    Case("value_avg_of_mixed_types", "mixed_assessment_types",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "passed"}, {"AVG": 2 / 3}), ({ASSESSMENT_NAME: "rating"}, {"AVG": 12.5 / 3})]),
    Case("value_avg_p50_p95", "five_scores",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, pct(50), pct(95), dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "score"},
           {"AVG": 30.0, "P50": 30.0, "P95": np.percentile([10, 20, 30, 40, 50], 95)})]),
    Case("feedback_value_avg", "numeric_feedback", query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG),
         [({}, {"AVG": 3.25 / 4})]),
    Case("expectation_value_avg", "numeric_expectations", query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG),
         [({}, {"AVG": 3.25 / 4})]),
    Case("json_string_feedback_has_no_value", "json_string_feedback",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]), []),
    Case("json_string_expectations_have_no_value", "json_string_expectations",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]), []),
    Case("errored_feedback_has_no_value", "null_and_numeric_feedback",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "score"}, {"AVG": 12})]),
    Case("value_avg_of_one_name", "assessments_for_name_filter",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME],
               filters=["assessment.name = 'accuracy'"]), [({ASSESSMENT_NAME: "accuracy"}, {"AVG": 0.85})]),
    # Not in MLflow's file: MIN/MAX, the count of an errored (null) feedback, overridden feedback.
    Case("value_min_max_per_name", "mixed_assessment_types",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, MIN, MAX, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "passed"}, {"MIN": 0.0, "MAX": 1.0}),
          ({ASSESSMENT_NAME: "rating"}, {"MIN": 3.0, "MAX": 5.0})]),
    Case("errored_feedback_counts_with_null_value", "null_and_numeric_feedback",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_VALUE]),
         [({ASSESSMENT_VALUE: "12"}, {"COUNT": 1}), ({ASSESSMENT_VALUE: "null"}, {"COUNT": 1})]),
    Case("expectations_per_json_value", "json_string_expectations",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_VALUE]),
         [({ASSESSMENT_VALUE: '"[1, 2, 3]"'}, {"COUNT": 1}),
          ({ASSESSMENT_VALUE: '"\\"test\\""'}, {"COUNT": 1}),
          ({ASSESSMENT_VALUE: '"{\\"a\\": 1, \\"b\\": 2}"'}, {"COUNT": 1})]),
    Case("overridden_feedback_not_counted", "overridden_feedback",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_NAME, ASSESSMENT_VALUE]),
         [({ASSESSMENT_NAME: "helpful", ASSESSMENT_VALUE: "false"}, {"COUNT": 1}),
          ({ASSESSMENT_NAME: "helpful", ASSESSMENT_VALUE: "true"}, {"COUNT": 1}),
          ({ASSESSMENT_NAME: "score", ASSESSMENT_VALUE: "3"}, {"COUNT": 1})]),
    Case("overridden_feedback_not_averaged", "overridden_feedback",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: "helpful"}, {"AVG": 0.5}), ({ASSESSMENT_NAME: "score"}, {"AVG": 3.0})]),
))
def test_assessment_counts_and_values_per_name_and_value(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


# ----------------------------------------------------------------------------------------------------------
# Time buckets.

@pytest.mark.parametrize("case", cases(
    Case("traces_per_hour", "hourly_traces", query(TRACES, TRACE_COUNT, COUNT, **HOURS_0_TO_3),
         [({TB: H0}, {"COUNT": 2}), ({TB: H1}, {"COUNT": 2}),
          ({TB: H2}, {"COUNT": 1})]),
    Case("sessions_per_hour", "hourly_sessions", query(TRACES, SESSION_COUNT, COUNT, **HOURS_0_TO_3),
         [({TB: H0}, {"COUNT": 2}), ({TB: H1}, {"COUNT": 1})]),
    Case("traces_per_hour_and_status", "hourly_statuses",
         query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_STATUS], time_interval_seconds=3600,
               start_time_ms=BASE_MS, end_time_ms=BASE_MS + 2 * HOUR_MS),
         [({TB: H0, TRACE_STATUS: "ERROR"}, {"COUNT": 1}),
          ({TB: H0, TRACE_STATUS: "OK"}, {"COUNT": 1}),
          ({TB: H1, TRACE_STATUS: "ERROR"}, {"COUNT": 1}),
          ({TB: H1, TRACE_STATUS: "OK"}, {"COUNT": 1})]),
    Case("spans_per_hour_of_their_start", "hourly_spans", query(SPANS, SPAN_COUNT, COUNT, **HOURS_0_TO_3),
         [({TB: H0}, {"COUNT": 2}), ({TB: H1}, {"COUNT": 2}),
          ({TB: H2}, {"COUNT": 1})]),
    Case("spans_per_hour_and_type", "hourly_span_types",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE], time_interval_seconds=3600,
               start_time_ms=BASE_MS, end_time_ms=BASE_MS + 2 * HOUR_MS),
         [({TB: H0, SPAN_TYPE: "CHAIN"}, {"COUNT": 1}),
          ({TB: H0, SPAN_TYPE: "LLM"}, {"COUNT": 1}),
          ({TB: H1, SPAN_TYPE: "CHAIN"}, {"COUNT": 1}),
          ({TB: H1, SPAN_TYPE: "LLM"}, {"COUNT": 1})]),
    # MLflow's file expects these assessments (created 0, 10, 60, 90 and 120 minutes after a trace of 00:00)
    # in hourly buckets of their creation time (2, 2, 1); MLflow 3.17.2 buckets an assessment by its trace's
    # time (assessments.trace_timestamp_ms, filled from trace_info.timestamp_ms): all of them in 00:00.
    Case("assessments_per_hour_of_their_trace", "hourly_assessments",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, **HOURS_0_TO_3), [({TB: H0}, {"COUNT": 5})]),
    Case("assessments_per_hour_of_their_trace_and_name", "hourly_assessment_names",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_NAME], time_interval_seconds=3600,
               start_time_ms=BASE_MS, end_time_ms=BASE_MS + 2 * HOUR_MS),
         [({TB: H0, ASSESSMENT_NAME: "correctness"}, {"COUNT": 2}),
          ({TB: H0, ASSESSMENT_NAME: "relevance"}, {"COUNT": 2})]),
    Case("assessment_value_per_hour_of_their_trace", "hourly_numeric_assessments",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, **HOURS_0_TO_3),
         [({TB: H0}, {"AVG": (0.8 + 0.9 + 0.7 + 0.75 + 0.95) / 5})]),
    # Not in MLflow's file: a range without buckets; inclusive ends; latency per hour.
    Case("traces_in_a_range_without_buckets", "hourly_traces",
         query(TRACES, TRACE_COUNT, COUNT, start_time_ms=BASE_MS + HOUR_MS,
               end_time_ms=BASE_MS + 2 * HOUR_MS),
         [({}, {"COUNT": 3})]),
    Case("traces_from_a_start_only", "hourly_traces",
         query(TRACES, LATENCY, AVG, start_time_ms=BASE_MS + 10 * MINUTE_MS + 1), [({}, {"AVG": 700 / 3})]),
    Case("latency_per_two_hours", "hourly_traces",
         query(TRACES, LATENCY, AVG, MAX, time_interval_seconds=7200, start_time_ms=BASE_MS,
               end_time_ms=BASE_MS + 2 * HOUR_MS - 1),
         [({TB: H0}, {"AVG": 175.0, "MAX": 250})]),
    Case("traces_up_to_an_end_only", "hourly_traces",
         query(TRACES, LATENCY, AVG, end_time_ms=BASE_MS + HOUR_MS), [({}, {"AVG": 150.0})]),
    Case("weeks_start_on_thursdays_from_the_epoch", "hourly_traces",
         query(TRACES, TRACE_COUNT, COUNT, time_interval_seconds=7 * 86400, start_time_ms=0,
               end_time_ms=2 * BASE_MS),
         [({TB: "2019-12-26T00:00:00+00:00"}, {"COUNT": 5})]),
    Case("traces_of_one_session_per_hour", "hourly_sessions",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.metadata.`mlflow.trace.session` = 'session-c'"],
               **HOURS_0_TO_3), [({TB: H1}, {"COUNT": 2})]),
))
def test_time_buckets_hourly_like_mlflow(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


# ----------------------------------------------------------------------------------------------------------
# Not in MLflow's file: semantics of sql_trace_metrics_utils.py that a copy can easily get wrong.

@pytest.mark.parametrize("case", cases(
    # Span counts and latency keep the spans whose TRACE is in the range (bucketed by their own start);
    # span costs keep spans whose own start is in it, the end millisecond included to its last nanosecond.
    Case("span_counts_windowed_by_trace_time", "spans_hours_after_their_trace",
         query(SPANS, SPAN_COUNT, COUNT, time_interval_seconds=3600, start_time_ms=BASE_MS,
               end_time_ms=BASE_MS + 30 * MINUTE_MS),
         [({TB: H2}, {"COUNT": 2}),
          ({TB: H3}, {"COUNT": 1})]),
    Case("span_counts_outside_their_trace_time", "spans_hours_after_their_trace",
         query(SPANS, SPAN_COUNT, COUNT, time_interval_seconds=3600, start_time_ms=BASE_MS + HOUR_MS,
               end_time_ms=BASE_MS + 3 * HOUR_MS), []),
    Case("span_costs_windowed_by_span_start", "spans_hours_after_their_trace",
         query(SPANS, TOTAL_COST, SUM, time_interval_seconds=3600, start_time_ms=BASE_MS + HOUR_MS,
               end_time_ms=BASE_MS + 3 * HOUR_MS),
         [({TB: H2}, {"SUM": 0.06}),
          ({TB: H3}, {"SUM": 0.03})]),
    Case("span_costs_not_in_their_trace_window", "spans_hours_after_their_trace",
         query(SPANS, INPUT_COST, SUM, start_time_ms=BASE_MS, end_time_ms=BASE_MS + 30 * MINUTE_MS), []),
    Case("span_latency_windowed_by_trace_time", "spans_hours_after_their_trace",
         query(SPANS, SPAN_LATENCY, AVG, start_time_ms=BASE_MS, end_time_ms=BASE_MS), [({}, {"AVG": 500.0})]),
    # Dimensions sort by bytes, as SQLite compares them: "A" < "B" < "_" < "a" < "b".
    Case("trace_names_sort_by_bytes", "mixed_case_names",
         query(TRACES, LATENCY, MIN, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "Alpha"}, {"MIN": 20}), ({TRACE_NAME: "Beta"}, {"MIN": 50}),
          ({TRACE_NAME: "_hidden"}, {"MIN": 40}), ({TRACE_NAME: "alpha"}, {"MIN": 30}),
          ({TRACE_NAME: "beta"}, {"MIN": 10})]),
    Case("span_names_and_types_sort_by_bytes", "mixed_case_names",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_TYPE, SPAN_NAME]),
         [({SPAN_TYPE: t, SPAN_NAME: n}, {"COUNT": 1})
          for t, n in [("CHAIN", "_"), ("LLM", "b"), ("TOOL", "B"), ("llm", "a")]]),
    Case("assessment_names_sort_by_bytes", "mixed_case_names",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, MAX, dimensions=[ASSESSMENT_NAME]),
         [({ASSESSMENT_NAME: n}, {"MAX": 1.0}) for n in ("A", "B", "a", "b")]),
    # max_results keeps the first rows in dimension order.
    Case("max_results_keeps_first_names", "span_names",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_NAME], max_results=2),
         [({SPAN_NAME: "generate_response"}, {"COUNT": 3}), ({SPAN_NAME: "process_input"}, {"COUNT": 2})]),
    Case("max_results_keeps_first_buckets", "hourly_statuses",
         query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_STATUS], time_interval_seconds=3600,
               start_time_ms=BASE_MS, end_time_ms=BASE_MS + 2 * HOUR_MS, max_results=3),
         [({TB: H0, TRACE_STATUS: "ERROR"}, {"COUNT": 1}),
          ({TB: H0, TRACE_STATUS: "OK"}, {"COUNT": 1}),
          ({TB: H1, TRACE_STATUS: "ERROR"}, {"COUNT": 1})]),
    Case("max_results_one_of_bytes_order", "mixed_case_names",
         query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_NAME], max_results=1),
         [({TRACE_NAME: "Alpha"}, {"COUNT": 1})]),
    # Several experiments at once; an empty one.
    Case("two_experiments", ("names", "statuses"), query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_NAME]),
         [({TRACE_NAME: "test_trace"}, {"COUNT": 5}), ({TRACE_NAME: "workflow_a"}, {"COUNT": 3}),
          ({TRACE_NAME: "workflow_b"}, {"COUNT": 2})]),
    # With nothing to count, COUNT still gives a row (0); SUM, AVG... give NULL, so no row.
    Case("empty_experiment_trace_count", "no_traces", query(TRACES, TRACE_COUNT, COUNT),
         [({}, {"COUNT": 0})]),
    Case("empty_experiment_session_count", "no_traces", query(TRACES, SESSION_COUNT, COUNT),
         [({}, {"COUNT": 0})]),
    Case("empty_experiment_span_count", "no_traces", query(SPANS, SPAN_COUNT, COUNT), [({}, {"COUNT": 0})]),
    Case("empty_experiment_latency", "no_traces", query(TRACES, LATENCY, AVG, MAX), []),
    Case("no_traces_in_range_count", "hourly_traces",
         query(TRACES, TRACE_COUNT, COUNT, start_time_ms=BASE_MS + 5 * HOUR_MS), [({}, {"COUNT": 0})]),
    Case("no_assessment_of_a_name", "numeric_feedback",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["assessment.name = 'nope'"]),
         [({}, {"COUNT": 0})]),
    # trace.tag.`mlflow.traceName` reads trace_info.trace_name; trace.metadata.`mlflow.trace.session` reads
    # session_id; `mlflow.trace.tokenUsage` matches the token columns against MLflow's canonical JSON.
    Case("trace_name_tag_filter", "reserved_keys",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.tag.`mlflow.traceName` = 'chat'"]),
         [({}, {"COUNT": 2})]),
    Case("trace_name_tag_filter_on_spans", "reserved_keys",
         query(SPANS, TOTAL_COST, SUM, filters=["trace.tag.`mlflow.traceName` = 'search'"]),
         [({}, {"SUM": 0.6})]),
    Case("trace_name_tag_filter_on_assessments", "reserved_keys",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, filters=["trace.tag.`mlflow.traceName` = 'chat'"]),
         [({}, {"AVG": 1.0})]),
    Case("session_metadata_filter", "reserved_keys",
         query(TRACES, TraceMetricKey.INPUT_TOKENS, SUM,
               filters=["trace.metadata.`mlflow.trace.session` = 's-1'"]),
         [({}, {"SUM": 30})]),
    Case("session_metadata_filter_on_spans", "reserved_keys",
         query(SPANS, SPAN_COUNT, COUNT, dimensions=[SPAN_NAME],
               filters=["trace.metadata.`mlflow.trace.session` = 's-2'"]),
         [({SPAN_NAME: "llm"}, {"COUNT": 1}), ({SPAN_NAME: "root"}, {"COUNT": 1})]),
    Case("session_metadata_filter_on_assessments", "reserved_keys",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT,
               filters=["trace.metadata.`mlflow.trace.session` = 's-1'"]),
         [({}, {"COUNT": 2})]),
    Case("token_usage_metadata_filter", "reserved_keys",
         query(TRACES, TRACE_COUNT, COUNT, dimensions=[TRACE_NAME], filters=[
             f"trace.metadata.`{TOKEN_USAGE}` = '{json.dumps(tokens(10, 5, 15))}'"]),
         [({TRACE_NAME: "chat"}, {"COUNT": 1}), ({TRACE_NAME: "search"}, {"COUNT": 1})]),
    Case("user_metadata_filter", "reserved_keys",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.metadata.`mlflow.trace.user` = 'alice'"]),
         [({}, {"COUNT": 2})]),
    Case("cost_metadata_filter", "trace_costs",
         query(TRACES, TRACE_COUNT, COUNT, filters=[
             "trace.metadata.`mlflow.trace.cost` = "
             """'{"input_cost": 0.1, "output_cost": 0.2, "total_cost": 0.3}'"""]),
         [({}, {"COUNT": 1})]),
    Case("double_quoted_filter_value", "model_version_tags",
         query(TRACES, TRACE_COUNT, COUNT, filters=['trace.tag.`model.version` = "model_v2"']),
         [({}, {"COUNT": 2})]),
    Case("tag_filter_on_spans", "reserved_keys",
         query(SPANS, SPAN_COUNT, COUNT, filters=["trace.tag.env = 'dev'", "span.type = 'LLM'"]),
         [({}, {"COUNT": 1})]),
    Case("tag_filter_on_assessments", "reserved_keys",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, dimensions=[ASSESSMENT_VALUE],
               filters=["trace.tag.env = 'prod'"]),
         [({ASSESSMENT_VALUE: "false"}, {"COUNT": 1}), ({ASSESSMENT_VALUE: "true"}, {"COUNT": 2})]),
    Case("sessions_of_tagged_traces", "reserved_keys",
         query(TRACES, SESSION_COUNT, COUNT, filters=["trace.tag.env = 'prod'"]), [({}, {"COUNT": 2})]),
))
def test_windows_sorting_limits_and_reserved_filter_keys(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


def test_source_run_filter_matches_metadata_and_linked_traces(stores: Stores, warehouse):
    """Not in MLflow's file: a run's traces are those naming it in metadata and those linked to it."""
    experiment_id = stores.experiment_ids["run_linked_traces"]
    (run,) = stores.mlflow.search_runs([experiment_id], "", 1)
    for view_type, metric, expected in [(TRACES, TRACE_COUNT, 2), (ASSESSMENTS, ASSESSMENT_COUNT, 1)]:
        kwargs = dict(experiment_ids=[experiment_id], view_type=view_type, metric_name=metric,
                      aggregations=[COUNT], filters=[f"trace.metadata.`{SOURCE_RUN}` = '{run.info.run_id}'"])
        theirs = rows(stores.mlflow.query_trace_metrics(**kwargs))
        assert theirs == [(metric, {}, {"COUNT": expected})]
        assert rows(warehouse.query_trace_metrics(**kwargs)) == approx_rows(theirs)


def test_cost_metadata_filter_matches_mlflows_exact_float_sums(stores: Stores, warehouse):
    """Not in MLflow's file: `trace.metadata.mlflow.trace.cost` compares the trace's cost columns with the
    JSON MLflow reports for them, float for float (0.1 + 0.2 is 0.30000000000000004)."""
    trace = stores.mlflow.get_trace_info("trace_costs-trace2")
    costs = trace.trace_metadata[TraceMetadataKey.COST]
    assert json.loads(costs) == {"input_cost": 0.30000000000000004, "output_cost": 0.6000000000000001,
                                 "total_cost": 0.8999999999999999}
    kwargs = dict(experiment_ids=[stores.experiment_ids["trace_costs"]], view_type=SPANS,
                  metric_name=SPAN_COUNT, aggregations=[COUNT],
                  filters=[f"trace.metadata.`{TraceMetadataKey.COST}` = '{costs}'"])
    theirs = rows(stores.mlflow.query_trace_metrics(**kwargs))
    assert theirs == [(SPAN_COUNT, {}, {"COUNT": 3})]
    assert rows(warehouse.query_trace_metrics(**kwargs)) == approx_rows(theirs)


# ----------------------------------------------------------------------------------------------------------
# Bad requests.

INVALID_TRACE_FILTERS = [  # test_query_trace_metrics_with_invalid_filter
    ("status = 'OK'", r"Invalid identifier 'status'"),
    ("trace.status != 'OK'", r"Invalid comparator: '!=', only '=' operator is supported"),
    ("trace.unsupported_field = 'value'", r"Invalid entity 'unsupported_field' specified"),
    ("span.status = 'OK'", r"Filtering by span is only supported for SPANS view type"),
    ("assessment.type = 'feedback'", r"Filtering by assessment is only supported for ASSESSMENTS view type"),
]
INVALID_SPAN_FILTERS = [  # test_query_span_metrics_invalid_filters
    ("status = 'OK'", r"Invalid identifier 'status'"),
    ("span.status != 'OK'", r"Invalid comparator: '!=', only '=' operator is supported"),
    ("span.invalid_field = 'value'", r"Invalid entity 'invalid_field' specified"),
    ("span.status.extra = 'value'", r"does not require a key"),
    ("span.name LIKE 'test%'", r"only '=' operator is supported"),
]
INVALID_ASSESSMENT_FILTERS = [  # test_query_assessments_metrics_invalid_filters
    ("name = 'accuracy'", r"Invalid identifier 'name'"),
    ("assessment.name != 'accuracy'", r"Invalid comparator: '!=', only '=' operator is supported"),
    ("assessment.invalid_field = 'value'", r"Invalid entity 'invalid_field' specified"),
    ("assessment.name.extra = 'value'", r"does not require a key"),
    ("assessment.type LIKE 'feed%'", r"only '=' operator is supported"),
    ("assessment.value = '0.8'", r"Invalid entity 'value' specified"),
]


@pytest.mark.parametrize("case", cases(
    *[Case(f"traces: {f}", "one_trace", query(TRACES, TRACE_COUNT, COUNT, filters=[f]), error=e)
      for f, e in INVALID_TRACE_FILTERS],
    *[Case(f"spans: {f}", "one_span", query(SPANS, SPAN_COUNT, COUNT, filters=[f]), error=e)
      for f, e in INVALID_SPAN_FILTERS],
    *[Case(f"assessments: {f}", "one_assessment", query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=[f]),
           error=e) for f, e in INVALID_ASSESSMENT_FILTERS],
    # Not in MLflow's file: the checks of validate_query_trace_metrics_params and query_trace_metrics.
    Case("metric_of_another_view", "one_span", query(SPANS, TRACE_COUNT, COUNT),
         error=r"metric_name must be one of"),
    Case("unknown_metric", "one_trace", query(TRACES, "cost", SUM), error=r"metric_name must be one of"),
    Case("sum_of_trace_count", "one_trace", query(TRACES, TRACE_COUNT, SUM, AVG),
         error=r"Found invalid aggregation_type\(s\): \['AVG', 'SUM'\]"),
    Case("sum_of_latency", "one_span", query(SPANS, SPAN_LATENCY, SUM),
         error=r"Found invalid aggregation_type"),
    Case("count_of_assessment_value", "one_assessment", query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, COUNT),
         error=r"Found invalid aggregation_type"),
    Case("latency_per_status", "one_trace", query(TRACES, LATENCY, AVG, dimensions=[TRACE_STATUS]),
         error=r"Found invalid dimension\(s\): \['trace_status'\]"),
    Case("sessions_per_name", "one_trace", query(TRACES, SESSION_COUNT, COUNT, dimensions=[TRACE_NAME]),
         error=r"Found invalid dimension"),
    Case("cost_per_span_type", "one_span", query(SPANS, TOTAL_COST, SUM, dimensions=[SPAN_TYPE, SPAN_NAME]),
         error=r"Found invalid dimension\(s\): \['span_name', 'span_type'\]"),
    Case("assessment_value_per_value", "one_assessment",
         query(ASSESSMENTS, ASSESSMENT_VALUE_METRIC, AVG, dimensions=[ASSESSMENT_VALUE]),
         error=r"Found invalid dimension"),
    Case("buckets_without_end", "one_trace",
         query(TRACES, TRACE_COUNT, COUNT, time_interval_seconds=3600, start_time_ms=BASE_MS),
         error=r"start_time_ms and end_time_ms are required if time_interval_seconds is set"),
    Case("buckets_without_range", "one_assessment",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, time_interval_seconds=60),
         error=r"start_time_ms and end_time_ms are required"),
    Case("span_filter_on_assessments", "one_assessment",
         query(ASSESSMENTS, ASSESSMENT_COUNT, COUNT, filters=["span.name = 'x'"]),
         error=r"Filtering by span is only supported for SPANS view type"),
    Case("assessment_filter_on_spans", "one_span",
         query(SPANS, SPAN_COUNT, COUNT, filters=["assessment.name = 'x'"]),
         error=r"Filtering by assessment is only supported for ASSESSMENTS view type"),
    Case("two_clauses_in_one_filter", "one_trace",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.status = 'OK' AND trace.tag.a = 'b'"]),
         error=r"Invalid clause|Expected one filter clause"),
    Case("unquoted_filter_value", "one_trace",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.status = 5"]),
         error=r"Expected a quoted string value"),
    Case("tag_filter_without_key", "one_trace",
         query(TRACES, TRACE_COUNT, COUNT, filters=["trace.tag = 'a'"]),
         error=r"Filtering by tag requires a key"),
    Case("unknown_view_in_filter", "one_trace", query(TRACES, TRACE_COUNT, COUNT, filters=["run.name = 'a'"]),
         error=r"Invalid view type 'run'"),
))
def test_bad_requests_raise_mlflows_error(case: Case, stores: Stores, warehouse):
    check(case, stores, warehouse)


# ----------------------------------------------------------------------------------------------------------
# The span view's hourly rollup.

SPAN_RANGES = {  # (start_time_ms, end_time_ms): open, whole hours, cut inside hours, inside one hour
    "open": (None, None), "whole hours": (BASE_MS, BASE_MS + 4 * HOUR_MS - 1),
    "cut": (BASE_MS + 10 * MINUTE_MS + 1, BASE_MS + 3 * HOUR_MS), "from a cut hour on": (BASE_MS + 1, None),
    "up to a cut hour": (None, BASE_MS + 2 * HOUR_MS + 5 * MINUTE_MS),
    "inside an hour": (BASE_MS, BASE_MS + 50 * MINUTE_MS),
}


@pytest.mark.parametrize("range_name", SPAN_RANGES)
def test_span_counts_latencies_and_costs_summed_from_the_rollup_equal_the_spans(range_name, stores: Stores,
                                                                                extracted: Path, rolled_up: Path):
    """Over every scenario's spans at once: each summable span metric, aggregation, dimension, span filter and
    whole-hour bucket size, over open, whole-hour and cut ranges, is the same answer from `mlflow_spans_hourly`
    (whole hours) plus the spans (part hours) as from the spans alone."""
    from mlflow.store.tracking.utils.sql_trace_metrics_utils import VIEW_TYPE_CONFIGS

    from assets.insights import trace_metrics
    from assets.insights.trace_metrics import WarehouseTraceStore

    start, end = SPAN_RANGES[range_name]
    ids = list(stores.experiment_ids.values())
    tables, summed = WarehouseTraceStore(str(extracted)), WarehouseTraceStore(str(rolled_up))  # one call at a time
    requests = [  # what MLflow allows of each metric (its VIEW_TYPE_CONFIGS), but percentiles
        dict(view_type=SPANS, metric_name=metric, aggregations=aggregations, dimensions=dimensions, filters=filters,
             time_interval_seconds=interval, start_time_ms=start, end_time_ms=end)
        for metric, config in VIEW_TYPE_CONFIGS[SPANS].items()
        for aggregations in [[MetricAggregation(kind)
                              for kind in sorted(config.aggregation_types - {AggregationType.PERCENTILE})]]
        for dimensions in [None, *([d] for d in sorted(config.dimensions)), sorted(config.dimensions)]
        for filters in [None, ["span.type = 'LLM'"], ["span.status = 'ERROR'", "span.name = 'llm'"]]
        for interval in ([None] if start is None or end is None else [None, 3600, 7200, 86400])
    ]
    answered, has_whole_hours = 0, range_name != "inside an hour"
    with summed.engine.connect() as conn:
        for request in requests:
            rolled_up = trace_metrics._span_rollup_select(
                conn, ids, request["metric_name"], request["aggregations"], request["dimensions"] or [],
                request["filters"] or [], request["time_interval_seconds"], start, end)
            assert (rolled_up is not None) == has_whole_hours, request
            expected = rows(tables.query_trace_metrics(ids, **request))
            assert rows(trace_metrics.query_trace_metrics(conn, ids, **request)) == approx_rows(expected), request
            answered += bool(expected)
    assert answered > len(requests) / 4  # many requests find spans: the comparison is not of empty answers
