"""MLflow's own client against `llmops serve`: MLflow's `RestStore.query_trace_metrics` over real HTTP answers what
MLflow's `SqlAlchemyStore.query_trace_metrics` answers on the same store, for every view type, metric,
aggregation and dimension MLflow allows, with filters and time buckets, and so does
`calculate_trace_filter_correlation`; bad requests raise MLflow's errors."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.rest_store import RestStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.store.tracking.utils.sql_trace_metrics_utils import VIEW_TYPE_CONFIGS
from mlflow.tracing.analysis import TraceFilterCorrelationResult
from mlflow.utils.rest_utils import MlflowHostCreds

from assets.insights.trace_metrics import WarehouseTraceStore
from tests.conftest import Store, llmops_serve, post_status

DAY_S = 86_400
EVERYTHING = {"start_time_ms": 0, "end_time_ms": 4_102_444_800_000}  # 1970 to 2100


@pytest.fixture(scope="module")
def api_url(warehouse: sa.Engine, tmp_path_factory) -> str:
    with llmops_serve({"LLMOPS_HOME": str(tmp_path_factory.mktemp("home")),
                       "LLMOPS_DUCKDB_PATH": warehouse.url.database}) as url:
        yield url


@pytest.fixture(scope="module")
def rest_store(api_url: str) -> RestStore:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server error fails the test at once
        yield RestStore(lambda: MlflowHostCreds(api_url))


def _aggregations(types) -> list[MetricAggregation]:
    return [MetricAggregation(t, 95.0) if t == AggregationType.PERCENTILE else MetricAggregation(t)
            for t in sorted(types)] + ([MetricAggregation(AggregationType.PERCENTILE, 50.0)]
                                       if AggregationType.PERCENTILE in types else [])


def _every_request() -> list:
    """Each metric of each view with every aggregation MLflow allows it: overall, per day, and per allowed
    dimension (per day too)."""
    cases = []
    for view, metrics in VIEW_TYPE_CONFIGS.items():
        for metric, config in metrics.items():
            base = {"view_type": view, "metric_name": metric, "aggregations": _aggregations(config.aggregation_types)}
            cases.append(pytest.param(base, id=f"{view.value}-{metric}"))
            cases.append(pytest.param({**base, "time_interval_seconds": DAY_S, **EVERYTHING},
                                      id=f"{view.value}-{metric}-daily"))
            for dimension in sorted(config.dimensions):
                cases.append(pytest.param({**base, "dimensions": [dimension]}, id=f"{view.value}-{metric}-{dimension}"))
                cases.append(pytest.param({**base, "dimensions": [dimension], "time_interval_seconds": 3600,
                                           **EVERYTHING}, id=f"{view.value}-{metric}-{dimension}-hourly"))
    return cases


FILTERED = [
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "latency",
                  "aggregations": [MetricAggregation(AggregationType.PERCENTILE, 90.0)],
                  "filters": ["trace.status = 'ERROR'"]}, id="trace-status"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "trace_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "dimensions": ["trace_status"],
                  "filters": ["trace.tag.persona = 'sme'"]}, id="trace-tag"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "total_tokens",
                  "aggregations": [MetricAggregation(AggregationType.SUM)],
                  "filters": ["trace.metadata.`mlflow.trace.user` = 'user-3'"]}, id="trace-metadata-user"),
    pytest.param({"view_type": MetricViewType.SPANS, "metric_name": "latency",
                  "aggregations": [MetricAggregation(AggregationType.AVG)], "dimensions": ["span_status"],
                  "filters": ["span.type = 'TOOL'", "trace.status = 'OK'"]}, id="span-type-and-trace-status"),
    pytest.param({"view_type": MetricViewType.SPANS, "metric_name": "span_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "dimensions": ["span_name"],
                  "filters": ["span.status = 'ERROR'"]}, id="span-status"),
    pytest.param({"view_type": MetricViewType.SPANS, "metric_name": "total_cost",
                  "aggregations": [MetricAggregation(AggregationType.SUM)], "dimensions": ["span_model_name"],
                  "filters": ["span.name = 'answer'"]}, id="span-name"),
    pytest.param({"view_type": MetricViewType.ASSESSMENTS, "metric_name": "assessment_value",
                  "aggregations": [MetricAggregation(AggregationType.AVG)], "dimensions": ["assessment_name"],
                  "filters": ["assessment.type = 'feedback'", "trace.status = 'ERROR'"]},
                 id="assessment-type-and-trace-status"),
    pytest.param({"view_type": MetricViewType.ASSESSMENTS, "metric_name": "assessment_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "dimensions": ["assessment_value"],
                  "filters": ["assessment.name = 'user_thumbs'"]}, id="assessment-name"),
]


def _points(answer) -> list[tuple]:
    """Data points comparably: MLflow's REST protocol carries values as doubles."""
    return [(p.metric_name, p.dimensions, {k: float(v) for k, v in p.values.items()}) for p in answer]


def _same(ours, mlflow_answer) -> None:
    assert len(ours) == len(mlflow_answer)
    for (name, dims, values), (m_name, m_dims, m_values) in zip(_points(ours), _points(mlflow_answer)):
        assert (name, dims, values.keys()) == (m_name, m_dims, m_values.keys())
        assert all(math.isclose(values[k], m_values[k], rel_tol=1e-9, abs_tol=1e-12) for k in values), (dims, values, m_values)


@pytest.mark.parametrize("request_", _every_request() + FILTERED)
def test_mlflow_rest_client_gets_mlflow_store_answers(request_, rest_store, mlflow_store: SqlAlchemyStore,
                                                     seeded_store: Store):
    expected = mlflow_store.query_trace_metrics([seeded_store.experiment_id], **request_)
    assert any(p.values for p in expected) or request_.get("filters"), "the seeded store exercises this request"
    _same(rest_store.query_trace_metrics([seeded_store.experiment_id], **request_), expected)


def test_python_api_pages_what_one_call_returns(warehouse: sa.Engine, seeded_store: Store):
    store = WarehouseTraceStore(warehouse.url.database)
    request_ = {"view_type": MetricViewType.SPANS, "metric_name": "span_count",
                "aggregations": [MetricAggregation(AggregationType.COUNT)], "dimensions": ["span_name"],
                "time_interval_seconds": 3600, **EVERYTHING}
    whole = store.query_trace_metrics([seeded_store.experiment_id], **request_)
    assert whole.token is None and len(whole) > 7
    pages, token = [], None
    while True:
        page = store.query_trace_metrics([seeded_store.experiment_id], **request_, max_results=7, page_token=token)
        pages.extend(page)
        token = page.token
        if token is None:
            break
    assert _points(pages) == _points(whole)


BAD_REQUESTS = [
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "cost",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)]}, id="unknown-metric"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "trace_count",
                  "aggregations": [MetricAggregation(AggregationType.AVG)]}, id="aggregation-not-allowed"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "latency",
                  "aggregations": [MetricAggregation(AggregationType.AVG)], "dimensions": ["span_name"]},
                 id="dimension-of-another-view"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "trace_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "time_interval_seconds": 60},
                 id="buckets-without-range"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "trace_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "filters": ["span.name = 'x'"]},
                 id="span-filter-on-traces"),
    pytest.param({"view_type": MetricViewType.TRACES, "metric_name": "trace_count",
                  "aggregations": [MetricAggregation(AggregationType.COUNT)], "filters": ["trace.status != 'OK'"]},
                 id="comparator-not-equals"),
]


@pytest.mark.parametrize("request_", BAD_REQUESTS)
def test_bad_requests_raise_mlflows_own_error(request_, rest_store, mlflow_store: SqlAlchemyStore,
                                             seeded_store: Store):
    with pytest.raises(MlflowException) as expected:
        mlflow_store.query_trace_metrics([seeded_store.experiment_id], **request_)
    with pytest.raises(MlflowException) as ours:
        rest_store.query_trace_metrics([seeded_store.experiment_id], **request_)
    # MLflow's client prefixes a server's message with its error code, as it does for MLflow's own server
    assert (ours.value.error_code, ours.value.message) == (
        expected.value.error_code, f"{expected.value.error_code}: {expected.value.message}")


def test_an_unknown_experiment_is_resource_does_not_exist(rest_store):
    with pytest.raises(MlflowException) as raised:
        rest_store.query_trace_metrics(["987654"], MetricViewType.TRACES, "trace_count",
                                       [MetricAggregation(AggregationType.COUNT)])
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST" and "987654" in raised.value.message


CORRELATIONS = [
    pytest.param(("span.name = 'web.fetch'", "attributes.status = 'ERROR'", None), id="tool-vs-error"),
    pytest.param(("feedback.user_thumbs = 'false'", "tags.persona = 'sme'", None), id="thumbs-vs-tag"),
    pytest.param(("span.status = 'ERROR'", "feedback.relevance < 0.5", "attributes.timestamp_ms > 0"),
                 id="with-base-filter"),
    pytest.param(("tags.persona = 'nobody'", "attributes.status = 'ERROR'", None), id="filter-matching-nothing"),
]


@pytest.mark.parametrize("filters", CORRELATIONS)
def test_mlflow_rest_client_gets_mlflow_store_correlations(filters, rest_store, mlflow_store: SqlAlchemyStore,
                                                          seeded_store: Store):
    answer = mlflow_store.calculate_trace_filter_correlation([seeded_store.experiment_id], *filters)
    # What MLflow's own server sends for it: its protocol leaves a NaN out (npmi reads back as NaN, the
    # smoothed value as None)
    expected = TraceFilterCorrelationResult.from_proto(answer.to_proto())
    ours = rest_store.calculate_trace_filter_correlation([seeded_store.experiment_id], *filters)
    counts = ("filter1_count", "filter2_count", "joint_count", "total_count")
    assert [getattr(ours, c) for c in counts] == [getattr(expected, c) for c in counts]
    for value in ("npmi", "npmi_smoothed"):
        mine, theirs = getattr(ours, value), getattr(expected, value)
        assert (mine is None and theirs is None) or (math.isnan(mine) and math.isnan(theirs)) or math.isclose(
            mine, theirs, rel_tol=1e-12), (value, mine, theirs)


def test_a_filter_the_warehouse_cannot_answer_is_invalid_parameter_value(rest_store, seeded_store: Store):
    with pytest.raises(MlflowException) as raised:
        rest_store.calculate_trace_filter_correlation([seeded_store.experiment_id], "span.attributes.x = 'y'",
                                                      "attributes.status = 'ERROR'")
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE" and "span.attributes" in raised.value.message


@pytest.mark.parametrize(("body", "message"), [
    ({"view_type": "TRACES", "metric_name": "trace_count", "aggregations": [{"aggregation_type": "COUNT"}]},
     "Missing value for required parameter 'experiment_ids'"),
    ({"experiment_ids": ["1"], "view_type": "TRACE", "metric_name": "trace_count",
      "aggregations": [{"aggregation_type": "COUNT"}]}, "Invalid enum value TRACE"),
    ({"experiment_ids": ["1"], "view_type": "TRACES", "metric_name": "trace_count",
      "aggregations": [{"aggregation_type": "COUNT"}], "max_result": 5}, "no field named \"max_result\""),
], ids=["missing-experiments", "unknown-view-type", "misspelt-field"])
def test_a_malformed_request_is_a_400_naming_the_field(body, message, api_url: str):
    status, answer = post_status(f"{api_url}/api/3.0/mlflow/traces/metrics", body)
    assert (status, answer["error_code"]) == (400, "INVALID_PARAMETER_VALUE") and message in answer["message"]
