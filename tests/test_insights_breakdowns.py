"""Assessment, tool and tag insights equal MLflow's own `query_trace_metrics` and `search_traces` on the same store."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import AssessmentError, AssessmentSource, AssessmentSourceType
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.breakdowns import (
    AssessmentQuery,
    TagQuery,
    ToolQuery,
    assessment_metrics,
    assessments_discovery,
    tag_metrics,
    tags_discovery,
    tool_metrics,
    tools_discovery,
)
from assets.insights.queries import InsightsQuery, TimeBucket
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.conftest import HOSTILE_TAGS, Store
from tests.test_extract import assert_matches_mlflow


def _metrics(mlflow_store, store: Store, view, metric, aggregations, **kwargs) -> list:
    return mlflow_store.query_trace_metrics([store.experiment_id], view, metric, aggregations, **kwargs)


def test_assessment_discovery_and_counts_equal_query_trace_metrics(warehouse, mlflow_store, seeded_store: Store):
    with warehouse.connect() as conn:
        found = assessments_discovery(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id])).data
    points = _metrics(mlflow_store, seeded_store, MetricViewType.ASSESSMENTS, "assessment_count",
                      [MetricAggregation(AggregationType.COUNT)], dimensions=["assessment_name"],
                      filters=["assessment.type = 'feedback'"])
    assert {a.name: a.count for a in found} == {p.dimensions["assessment_name"]: p.values["COUNT"] for p in points}
    kinds = {a.name: (a.assessment_type, a.sources) for a in found}
    assert kinds == {"user_thumbs": ("boolean", ["HUMAN"]), "relevance": ("numeric", ["LLM_JUDGE"]),
                     "tone": ("string", ["LLM_JUDGE"])}


@pytest.mark.parametrize("name", ["user_thumbs", "tone"])
def test_boolean_and_string_value_counts_equal_query_trace_metrics(warehouse, mlflow_store, seeded_store: Store, name):
    with warehouse.connect() as conn:
        ours = assessment_metrics(conn, AssessmentQuery(experiment_ids=[seeded_store.experiment_id], assessment_name=name))
    points = _metrics(mlflow_store, seeded_store, MetricViewType.ASSESSMENTS, "assessment_count",
                      [MetricAggregation(AggregationType.COUNT)], dimensions=["assessment_value"],
                      filters=[f"assessment.name = '{name}'", "assessment.type = 'feedback'"])
    theirs = {json.loads(p.dimensions["assessment_value"]): p.values["COUNT"] for p in points}
    if ours.assessment_type == "boolean":
        assert (ours.summary.true_count, ours.summary.false_count) == (theirs[True], theirs[False])
        assert math.isclose(ours.summary.true_rate, theirs[True] / (theirs[True] + theirs[False]))
    else:
        assert {v.value: v.count for v in ours.summary.values} == theirs
        assert [v.count for v in ours.summary.values] == sorted(theirs.values(), reverse=True)
    assert ours.summary.count == sum(theirs.values()) == sum(p.count for p in ours.time_series)


def test_numeric_assessment_stats_equal_query_trace_metrics(warehouse, mlflow_store, seeded_store: Store):
    with warehouse.connect() as conn:
        ours = assessment_metrics(
            conn, AssessmentQuery(experiment_ids=[seeded_store.experiment_id], assessment_name="relevance")
        )
    (point,) = _metrics(
        mlflow_store, seeded_store, MetricViewType.ASSESSMENTS, "assessment_value",
        [MetricAggregation(AggregationType.AVG), MetricAggregation(AggregationType.MIN),
         MetricAggregation(AggregationType.MAX), MetricAggregation(AggregationType.PERCENTILE, 50.0),
         MetricAggregation(AggregationType.PERCENTILE, 90.0)],
        filters=["assessment.name = 'relevance'"],
    )
    stats = ours.summary
    assert ours.assessment_type == "numeric" and stats.count > 0
    for ours_value, key in ((stats.avg, "AVG"), (stats.min, "MIN"), (stats.max, "MAX"), (stats.p50, "P50.0"),
                            (stats.p90, "P90.0")):
        assert math.isclose(ours_value, point.values[key]), key


def test_unknown_assessment_gives_none(warehouse, seeded_store: Store):
    with warehouse.connect() as conn:
        query = AssessmentQuery(experiment_ids=[seeded_store.experiment_id], assessment_name="no such feedback")
        assert assessment_metrics(conn, query) is None


def test_tools_equal_query_trace_metrics_span_counts_and_latency(warehouse, mlflow_store, seeded_store: Store):
    with warehouse.connect() as conn:
        tools = tools_discovery(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id])).data
        metrics = {
            t.name: tool_metrics(conn, ToolQuery(experiment_ids=[seeded_store.experiment_id], tool_name=t.name,
                                                 time_bucket=TimeBucket.week))
            for t in tools
        }
    counts = _metrics(mlflow_store, seeded_store, MetricViewType.SPANS, "span_count",
                      [MetricAggregation(AggregationType.COUNT)], dimensions=["span_name", "span_status"],
                      filters=["span.type = 'TOOL'"])
    calls, errors = Counter(), Counter()
    for p in counts:
        calls[p.dimensions["span_name"]] += p.values["COUNT"]
        errors[p.dimensions["span_name"]] += p.values["COUNT"] if p.dimensions["span_status"] == "ERROR" else 0
    assert {t.name: (t.calls, t.error_count) for t in tools} == {n: (calls[n], errors[n]) for n in calls}
    assert len(tools) == 4 and sum(errors.values()) > 0
    for name, ours in metrics.items():
        assert (ours.summary.calls, ours.summary.error_count) == (calls[name], errors[name])
        assert sum(p.calls for p in ours.time_series) == calls[name]
        (latency,) = _metrics(
            mlflow_store, seeded_store, MetricViewType.SPANS, "latency",
            [MetricAggregation(AggregationType.PERCENTILE, p) for p in (50.0, 90.0, 95.0, 99.0)],
            filters=["span.type = 'TOOL'", f"span.name = '{name}'"],
        )
        # MLflow floors span durations to whole milliseconds; ours keep the fraction, so each percentile is
        # at most one millisecond above MLflow's and never below it.
        for p in (50, 90, 95, 99):
            gap = getattr(ours.summary, f"p{p}_latency") - latency.values[f"P{p}.0"]
            assert 0 <= gap < 1, (name, p, gap)


def test_tags_equal_search_traces_counts_including_hostile_values(warehouse, seeded_store: Store):
    client = MlflowClient(seeded_store.uri)
    with warehouse.connect() as conn:
        keys = {t.key: t for t in tags_discovery(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id])).data}
        persona = tag_metrics(conn, TagQuery(experiment_ids=[seeded_store.experiment_id], tag_key="persona", limit=2))
        hostile = {key: tag_metrics(conn, TagQuery(experiment_ids=[seeded_store.experiment_id], tag_key=key))
                   for key in HOSTILE_TAGS}
    assert {"persona", "channel", "environment", *HOSTILE_TAGS} <= set(keys)
    assert not any(key.startswith("mlflow.") for key in keys)
    assert keys["persona"].trace_count == len(seeded_store.trace_ids) and keys["persona"].distinct_values == 3
    assert len(persona.summary.values) == 2 and persona.summary.distinct_values == 3
    for value in persona.summary.values:
        found = client.search_traces(locations=[seeded_store.experiment_id], max_results=1000, include_spans=False,
                                     filter_string=f"tags.persona = '{value.value}'")
        assert value.count == len(found) > 0
    for key, response in hostile.items():
        assert [(v.value, v.count) for v in response.summary.values] == [(HOSTILE_TAGS[key], 1)]
    assert sum(p.trace_count for p in persona.time_series) == persona.summary.trace_count
    assert all(len(p.values) <= 2 for p in persona.time_series)


def test_failed_judge_runs_are_skipped_and_keep_each_name_typed(store: Store, warehouse_path: str, tmp_path: Path):
    """A judge or scorer that errors logs JSON null with its error. It used to turn `relevance` into a string
    feedback (no average) and `user_thumbs` into one with no false count; MLflow's metrics skip such values."""
    for trace_id, name in zip(store.trace_ids[:4], ("relevance", "relevance", "user_thumbs", "user_thumbs")):
        mlflow.log_feedback(trace_id=trace_id, name=name, source=AssessmentSource(AssessmentSourceType.LLM_JUDGE, "judge"),
                            error=AssessmentError(error_code="TIMEOUT", error_message="the judge timed out"))
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    assert_matches_mlflow(store, warehouse_path)  # the failed runs are copied, typed as no value
    mlflow_store = SqlAlchemyStore(store.uri, str(tmp_path / "artifacts"))
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    engine = sa.create_engine(f"duckdb:///{warehouse_path}", connect_args={"read_only": True})
    with engine.connect() as conn:
        kinds = {a.name: a.assessment_type for a in assessments_discovery(conn, query).data}
        relevance = assessment_metrics(conn, AssessmentQuery(**query.model_dump(), assessment_name="relevance"))
        thumbs = assessment_metrics(conn, AssessmentQuery(**query.model_dump(), assessment_name="user_thumbs"))
    engine.dispose()
    assert kinds == {"user_thumbs": "boolean", "relevance": "numeric", "tone": "string"}
    (point,) = _metrics(mlflow_store, store, MetricViewType.ASSESSMENTS, "assessment_value",
                        [MetricAggregation(AggregationType.AVG)], filters=["assessment.name = 'relevance'"])
    assert math.isclose(relevance.summary.avg, point.values["AVG"])
    points = _metrics(mlflow_store, store, MetricViewType.ASSESSMENTS, "assessment_count",
                      [MetricAggregation(AggregationType.COUNT)], dimensions=["assessment_value"],
                      filters=["assessment.name = 'user_thumbs'", "assessment.type = 'feedback'"])
    theirs = {json.loads(p.dimensions["assessment_value"]): p.values["COUNT"] for p in points}
    assert theirs.pop(None) == 2  # MLflow counts the failed runs as a value of their own; they are no value here
    assert (thumbs.summary.true_count, thumbs.summary.false_count, thumbs.summary.count) == (
        theirs[True], theirs[False], theirs[True] + theirs[False])


def test_feedback_discovery_is_read_once_per_transaction_and_anew_in_the_next(warehouse, seeded_store: Store,
                                                                             tmp_path: Path):
    """Discovery and correlations ask for the feedback names twice in a request: the second answer is the first,
    not a second query; a new transaction reads the warehouse again and sees what was written meanwhile."""
    from resources.warehouse import sqlalchemy_engine

    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(warehouse.url.database, path)
    engine = sqlalchemy_engine(str(path), read_only=False)
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id])
    with engine.connect() as reader, engine.connect() as writer:
        first = assessments_discovery(reader, query)
        renamed = first.data[0].name
        writer.execute(sa.text("UPDATE assessments SET name = 'renamed' WHERE name = :name"), {"name": renamed})
        writer.commit()
        read = len(statements)
        assert assessments_discovery(reader, query) == first and len(statements) == read
        reader.commit()
        names = {info.name for info in assessments_discovery(reader, query).data}
    assert "renamed" in names and renamed not in names
    engine.dispose()
