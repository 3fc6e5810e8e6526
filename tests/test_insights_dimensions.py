"""Dimensions discovered from the data; NPMI requests and correlation rankings equal MLflow's
`calculate_trace_filter_correlation` for the same filters."""

from __future__ import annotations

import math

import pytest
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

from assets.insights.dimensions import (
    CorrelationsRequest,
    NpmiRequest,
    calculate_dimensions_npmi,
    correlation,
    correlations,
    dimensions_discovery,
)
from assets.insights.npmi import Dimension, DimensionError, calculate_npmi, mlflow_filter_string
from assets.insights.queries import InsightsQuery
from tests.conftest import HOSTILE_TAGS, Store


def test_discovery_comes_from_the_data(warehouse, mlflow_store, seeded_store: Store):
    with warehouse.connect() as conn:
        found = {d.name: d for d in dimensions_discovery(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id])).data}
    tools = {
        p.dimensions["span_name"]
        for p in mlflow_store.query_trace_metrics(
            [seeded_store.experiment_id], MetricViewType.SPANS, "span_count", [MetricAggregation(AggregationType.COUNT)],
            dimensions=["span_name"], filters=["span.type = 'TOOL'"],
        )
    }
    assert {name.removeprefix("tools.") for name in found if name.startswith("tools.")} == tools
    assert {f"tags.{key}" for key in HOSTILE_TAGS} | {"tags.persona", "status", "span.type", "latency"} <= set(found)
    assert found["status"].parameters[0].enum_values == ["ERROR", "OK"]
    assert "TOOL" in found["span.type"].parameters[0].enum_values
    assert found["tags.sql"].parameters[0].enum_values == [HOSTILE_TAGS["sql"]]
    assert [p.name for p in found["assessment.relevance"].parameters] == ["threshold", "operator"]
    assert found["assessment.user_thumbs"].parameters[0].type == "boolean"
    assert found["assessment.tone"].parameters[0].enum_values == ["curt", "friendly", "neutral"]
    assert not any(name.startswith("tags.mlflow.") for name in found)


# (dimension as the REST API sends it: string parameters like the seed's, MLflow filter for the same traces)
PAIRS = [
    ({"name": "latency", "parameters": {"threshold": "2000", "operator": ">"}}, "trace.execution_time_ms > 2000",
     {"name": "assessment.user_thumbs", "parameters": {"value": "false"}}, "feedback.user_thumbs = 'false'"),
    ({"name": "assessment.relevance", "parameters": {"threshold": 0.5, "operator": "<"}}, "feedback.relevance < 0.5",
     {"name": "tags.channel", "parameters": {"value": "slack"}}, "tags.channel = 'slack'"),
    ({"name": "assessment.tone", "parameters": {"value": "curt"}}, "feedback.tone = 'curt'",
     {"name": "assessment.user_thumbs", "parameters": {"value": True}}, "feedback.user_thumbs = 'true'"),
    # a tag value with quotes and SQL in it
    ({"name": "tags.sql", "parameters": {"value": HOSTILE_TAGS["sql"]}}, f'tags.sql = "{HOSTILE_TAGS["sql"]}"',
     {"name": "status", "parameters": {"value": "OK"}}, "attributes.status = 'OK'"),
    # never together: npmi -1
    ({"name": "status", "parameters": {"value": "OK"}}, "attributes.status = 'OK'",
     {"name": "status", "parameters": {"value": "ERROR"}}, "attributes.status = 'ERROR'"),
    # one side matches nothing: NaN, returned as null
    ({"name": "tags.persona", "parameters": {"value": "nobody"}}, "tags.persona = 'nobody'",
     {"name": "status", "parameters": {"value": "ERROR"}}, "attributes.status = 'ERROR'"),
]


@pytest.mark.parametrize("first, filter1, second, filter2", PAIRS, ids=[p[1] + " ~ " + p[3] for p in PAIRS])
def test_npmi_request_equals_calculate_trace_filter_correlation(
    warehouse, mlflow_store, seeded_store: Store, first, filter1, second, filter2
):
    request = NpmiRequest(experiment_ids=[seeded_store.experiment_id], dimension1=first, dimension2=second)
    with warehouse.connect() as conn:
        ours = calculate_dimensions_npmi(conn, request)
    theirs = mlflow_store.calculate_trace_filter_correlation([seeded_store.experiment_id], filter1, filter2)
    assert (ours.total_count, ours.dimension1.count, ours.dimension2.count, ours.intersection.count) == (
        theirs.total_count, theirs.filter1_count, theirs.filter2_count, theirs.joint_count,
    )
    if math.isnan(theirs.npmi):
        assert ours.correlation.npmi_score is None and ours.correlation.strength is None
    else:
        assert math.isclose(ours.correlation.npmi_score, theirs.npmi, abs_tol=1e-12)
        assert math.isclose(ours.correlation.npmi_smoothed, theirs.npmi_smoothed, abs_tol=1e-12)
    if filter1 == "attributes.status = 'OK'":
        assert ours.intersection.count == 0 and ours.correlation.npmi_score == -1.0
        assert (ours.correlation.strength, ours.correlation.direction) == ("Strong", "negative")


@pytest.mark.parametrize("score, strength, direction", [
    (0.71, "Strong", "positive"), (-0.9, "Strong", "negative"), (0.7, "Moderate", "positive"),
    (-0.4, "Moderate", "negative"), (0.39, "Weak", "positive"), (0.0, "Weak", "none"),
])
def test_strength_bands(score, strength, direction):
    assert (correlation(score, score).strength, correlation(score, score).direction) == (strength, direction)


TARGETS = [
    (Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.user_thumbs = 'false'"),
    (Dimension(name="status", parameters={"value": "ERROR"}), "attributes.status = 'ERROR'"),
]


@pytest.mark.parametrize("target, target_filter", TARGETS, ids=[t[1] for t in TARGETS])
def test_correlations_rank_every_dimension_with_mlflows_counts(
    warehouse, mlflow_store, seeded_store: Store, target, target_filter
):
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id])
    with warehouse.connect() as conn:
        ranked = correlations(conn, CorrelationsRequest(**query.model_dump(), dimension=target, limit=None))
        pairs = {(c.dimension.name, c.value): calculate_npmi(conn, query, target, c.dimension) for c in ranked.data}
    families = {c.dimension.name.split(".")[0] for c in ranked.data}
    assert {"tools", "tags", "span", "latency", "assessment"} <= families | {"status"}
    scores = [c.correlation.npmi_score for c in ranked.data]
    assert scores == sorted(scores, reverse=True) and all(c.intersection_count >= 1 for c in ranked.data)
    assert not any(c.dimension.name == target.name for c in ranked.data)
    compared: set[str] = set()
    for candidate in ranked.data:
        pair = pairs[(candidate.dimension.name, candidate.value)]
        assert (pair.dimension1_count, pair.dimension2_count, pair.joint_count) == (
            ranked.dimension.count, candidate.count, candidate.intersection_count,
        )
        assert math.isclose(pair.npmi, candidate.correlation.npmi_score, abs_tol=1e-12)
        mlflow_filter = mlflow_filter_string(candidate.dimension)
        if mlflow_filter:
            theirs = mlflow_store.calculate_trace_filter_correlation(
                [seeded_store.experiment_id], target_filter, mlflow_filter
            )
            assert (theirs.filter2_count, theirs.joint_count) == (candidate.count, candidate.intersection_count)
            assert math.isclose(theirs.npmi, candidate.correlation.npmi_score, abs_tol=1e-12)
            compared.add(candidate.dimension.name.split(".")[0])
    assert compared >= {"tools", "tags", "span", "latency", "assessment"}  # each family MLflow can express


def test_correlations_honour_limit_and_support(warehouse, seeded_store: Store):
    target = TARGETS[1][0]
    with warehouse.connect() as conn:
        every = correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id], dimension=target,
                                                       limit=None))
        top = correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id], dimension=target,
                                                     limit=3, min_support=2))
    supported = [c for c in every.data if c.intersection_count >= 2]
    assert [(c.dimension, c.intersection_count) for c in top.data] == [
        (c.dimension, c.intersection_count) for c in supported[:3]
    ]
    assert len(supported) < len(every.data)


def test_bad_target_names_the_problem(warehouse, seeded_store: Store):
    with warehouse.connect() as conn, pytest.raises(DimensionError, match="unknown dimension 'mood'"):
        correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id],
                                               dimension=Dimension(name="mood", parameters={"value": "x"})))


@pytest.mark.parametrize("dimension, expected", [
    (Dimension(name="tags.note", parameters={"value": HOSTILE_TAGS["note"]}), None),  # both quote kinds
    (Dimension(name="tags.sql", parameters={"value": "' OR 1=1 --"}), "tags.`sql` = \"' OR 1=1 --\""),
    (Dimension(name="tools.web.fetch", parameters={"value": "error"}), None),
    (Dimension(name="tools.web.fetch", parameters={}), "span.name = 'web.fetch'"),
    (Dimension(name="assessment.relevance", parameters={"threshold": "0.5", "operator": "<="}),
     "feedback.`relevance` <= 0.5"),
    (Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.`user_thumbs` = 'false'"),
])
def test_mlflow_filter_strings(dimension, expected):
    assert mlflow_filter_string(dimension) == expected
