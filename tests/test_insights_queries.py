"""Traffic insights from the warehouse equal MLflow's own `query_trace_metrics` on the same store."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

from assets.insights.queries import (
    InsightsQuery,
    TimeBucket,
    traffic_errors,
    traffic_latency,
    traffic_tokens,
    traffic_volume,
)
from tests.conftest import Store

PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def _window(warehouse: sa.Engine) -> tuple[int, int]:
    with warehouse.connect() as conn:
        low, high = conn.execute(sa.text("SELECT min(timestamp_ms), max(timestamp_ms) FROM traces")).one()
    return low + 3_600_000, high - 3_600_000  # cut an hour off both ends: the bounds must be honoured


def _bucket_ms(point) -> int:
    return int(datetime.fromisoformat(point.dimensions["time_bucket"]).timestamp() * 1000)


@pytest.mark.parametrize("bucket", list(TimeBucket))
def test_volume_equals_query_trace_metrics(warehouse, mlflow_store, seeded_store: Store, bucket: TimeBucket):
    start, end = _window(warehouse)
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id], start_time=start, end_time=end, time_bucket=bucket)
    with warehouse.connect() as conn:
        ours = traffic_volume(conn, query)
    points = mlflow_store.query_trace_metrics(
        [seeded_store.experiment_id], MetricViewType.TRACES, "trace_count", [MetricAggregation(AggregationType.COUNT)],
        dimensions=["trace_status"], time_interval_seconds=bucket.milliseconds // 1000, start_time_ms=start,
        end_time_ms=end,
    )
    expected: dict[int, dict[str, int]] = {}
    for p in points:
        expected.setdefault(_bucket_ms(p), {})[p.dimensions["trace_status"]] = p.values["COUNT"]
    assert {pt.time_bucket: (pt.count, pt.ok_count, pt.error_count) for pt in ours.time_series} == {
        b: (sum(c.values()), c.get("OK", 0), c.get("ERROR", 0)) for b, c in expected.items()
    }
    total = sum(sum(c.values()) for c in expected.values())
    assert ours.summary.count == total and 0 < total < len(seeded_store.trace_ids)
    assert ours.summary.error_count == sum(c.get("ERROR", 0) for c in expected.values()) > 0


def test_latency_percentiles_equal_query_trace_metrics(warehouse, mlflow_store, seeded_store: Store):
    start, end = _window(warehouse)
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id], start_time=start, end_time=end)
    with warehouse.connect() as conn:
        ours = traffic_latency(conn, query)
    aggregations = [MetricAggregation(AggregationType.PERCENTILE, p) for p in PERCENTILES]
    aggregations.append(MetricAggregation(AggregationType.AVG))

    def mlflow_latency(**kwargs):
        return mlflow_store.query_trace_metrics(
            [seeded_store.experiment_id], MetricViewType.TRACES, "latency", aggregations, start_time_ms=start,
            end_time_ms=end, **kwargs,
        )

    def as_tuple(values: dict) -> tuple:
        return tuple(values[f"P{p}"] for p in PERCENTILES) + (values["AVG"],)

    def ours_tuple(stats) -> tuple:
        return (stats.p50_latency, stats.p90_latency, stats.p95_latency, stats.p99_latency, stats.avg_latency)

    (summary,) = mlflow_latency()
    assert all(map(math.isclose, ours_tuple(ours.summary), as_tuple(summary.values)))
    expected = {_bucket_ms(p): as_tuple(p.values) for p in mlflow_latency(time_interval_seconds=86_400)}
    assert set(expected) == {pt.time_bucket for pt in ours.time_series}
    for point in ours.time_series:
        assert all(map(math.isclose, ours_tuple(point), expected[point.time_bucket])), point.time_bucket


def test_errors_match_volume_and_rate(warehouse, seeded_store: Store):
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id], time_bucket=TimeBucket.day)
    with warehouse.connect() as conn:
        errors, volume = traffic_errors(conn, query), traffic_volume(conn, query)
    assert (errors.summary.total_count, errors.summary.error_count) == (volume.summary.count, volume.summary.error_count)
    assert math.isclose(errors.summary.error_rate, volume.summary.error_count / volume.summary.count)
    assert [(p.time_bucket, p.error_count) for p in errors.time_series] == [
        (p.time_bucket, p.error_count) for p in volume.time_series
    ]


def test_tokens_equal_query_trace_metrics_and_cost_equals_mlflow_metadata(warehouse, mlflow_store, seeded_store: Store):
    start, end = _window(warehouse)
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id], start_time=start, end_time=end)
    with warehouse.connect() as conn:
        ours = traffic_tokens(conn, query)
    for metric in ("input_tokens", "output_tokens", "total_tokens"):
        (point,) = mlflow_store.query_trace_metrics(
            [seeded_store.experiment_id], MetricViewType.TRACES, metric, [MetricAggregation(AggregationType.SUM)],
            start_time_ms=start, end_time_ms=end,
        )
        assert getattr(ours.summary, metric) == point.values["SUM"] > 0, metric
    traces = MlflowClient(seeded_store.uri).search_traces(
        locations=[seeded_store.experiment_id], max_results=1000, include_spans=False,
        filter_string=f"trace.timestamp_ms >= {start} AND trace.timestamp_ms <= {end}",
    )
    cost = sum(json.loads(t.info.trace_metadata.get("mlflow.trace.cost", "{}")).get("total_cost", 0) for t in traces)
    assert math.isclose(ours.summary.total_cost, cost, rel_tol=1e-9) and cost > 0
    assert sum(p.total_tokens for p in ours.time_series) == ours.summary.total_tokens


def test_unknown_experiment_gives_empty_results(warehouse):
    with warehouse.connect() as conn:
        volume = traffic_volume(conn, InsightsQuery(experiment_ids=["no-such-experiment"]))
        errors = traffic_errors(conn, InsightsQuery(experiment_ids=["no-such-experiment"]))
    assert volume.summary.count == 0 and volume.time_series == []
    assert errors.summary.error_rate is None


def test_bad_query_names_the_field():
    with pytest.raises(ValueError, match="time_bucket"):
        InsightsQuery(experiment_ids=["1"], time_bucket="fortnight")
    with pytest.raises(ValueError, match="experiment_ids"):
        InsightsQuery(experiment_ids=[])
