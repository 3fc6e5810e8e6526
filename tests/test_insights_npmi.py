"""NPMI and its counts equal MLflow's `calculate_trace_filter_correlation`; the formula equals MLflow's."""

from __future__ import annotations

import itertools
import math

import pytest
import sqlalchemy as sa
from mlflow.store.analytics.trace_correlation import calculate_npmi_from_counts
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.npmi import Counts, Dimension, DimensionError, calculate_npmi, npmi
from assets.insights.queries import InsightsQuery
from tests.conftest import HOSTILE_TAGS, Store


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-12)


def test_formula_equals_mlflow_on_every_small_table_including_edge_cases():
    for total, first, second, joint in itertools.product(range(0, 7), repeat=4):
        ours = npmi(Counts(total, first, second, joint))
        theirs = calculate_npmi_from_counts(joint, first, second, total)
        assert same(ours[0], theirs.npmi) and same(ours[1], theirs.npmi_smoothed), (total, first, second, joint)


PAIRS = [
    (Dimension(name="status", parameters={"value": "ERROR"}), "attributes.status = 'ERROR'",
     Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.user_thumbs = 'false'"),
    (Dimension(name="tools.web.fetch", parameters={"value": "used"}), "span.name = 'web.fetch'",
     Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.user_thumbs = 'false'"),
    (Dimension(name="tags.persona", parameters={"value": "sme"}), "tags.persona = 'sme'",
     Dimension(name="status", parameters={"value": "ERROR"}), "attributes.status = 'ERROR'"),
    (Dimension(name="span.type", parameters={"value": "TOOL"}), "span.type = 'TOOL'",
     Dimension(name="tags.channel", parameters={"value": "slack"}), "tags.channel = 'slack'"),
    (Dimension(name="tools.sql.query", parameters={"value": "used"}), "span.name = 'sql.query'",
     Dimension(name="assessment.user_thumbs", parameters={"value": True}), "feedback.user_thumbs = 'true'"),
    # A numeric judge's value asked as a string, as MLflow's filter syntax asks it.
    (Dimension(name="assessment.relevance", parameters={"value": "0.7"}), "feedback.relevance = '0.7'",
     Dimension(name="status", parameters={"value": "OK"}), "attributes.status = 'OK'"),
]


@pytest.mark.parametrize("first, filter1, second, filter2", PAIRS, ids=[p[1] + " ~ " + p[3] for p in PAIRS])
def test_counts_and_npmi_equal_calculate_trace_filter_correlation(
    warehouse, mlflow_store: SqlAlchemyStore, seeded_store: Store, first, filter1, second, filter2
):
    with warehouse.connect() as conn:
        ours = calculate_npmi(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id]), first, second)
    theirs = mlflow_store.calculate_trace_filter_correlation([seeded_store.experiment_id], filter1, filter2)
    assert (ours.total_count, ours.dimension1_count, ours.dimension2_count, ours.joint_count) == (
        theirs.total_count, theirs.filter1_count, theirs.filter2_count, theirs.joint_count,
    )
    assert ours.dimension1_count > 0 and ours.dimension2_count > 0
    assert same(ours.npmi, theirs.npmi) and same(ours.npmi_smoothed, theirs.npmi_smoothed)


def test_a_number_asked_as_a_string_matches_the_numeric_feedback(warehouse, seeded_store: Store):
    """`"1"` matches a judge's 1.0 (stored as the JSON text `1.0`) like the number 1 does; it used to match nothing."""
    query, ok = InsightsQuery(experiment_ids=[seeded_store.experiment_id]), Dimension(name="status", parameters={"value": "OK"})
    with warehouse.connect() as conn:
        counts = [calculate_npmi(conn, query, Dimension(name="assessment.relevance", parameters={"value": value}), ok)
                  .dimension1_count for value in ("1", 1, 1.0, "1.0")]
    assert counts[0] > 0 and len(set(counts)) == 1, counts


def test_hostile_tag_values_are_bound_not_spliced(warehouse, seeded_store: Store):
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id])
    with warehouse.connect() as conn:
        for key, value in HOSTILE_TAGS.items():
            result = calculate_npmi(conn, query, Dimension(name=f"tags.{key}", parameters={"value": value}),
                                    Dimension(name="status", parameters={"value": "OK"}))
            assert result.dimension1_count == 1, key
        assert conn.execute(sa.text("SELECT count(*) FROM traces")).scalar() == len(seeded_store.trace_ids)


@pytest.mark.parametrize("dimension, message", [
    (Dimension(name="colour", parameters={"value": "red"}), "unknown dimension 'colour'"),
    (Dimension(name="status"), "dimension 'status' needs parameter 'value'"),
    (Dimension(name="latency", parameters={"threshold": 5, "operator": "~"}), "operator must be one of"),
    (Dimension(name="latency", parameters={"threshold": "slow"}), "threshold must be a number"),
    (Dimension(name="tools.web.fetch", parameters={"value": "sometimes"}), "used, error or success"),
])
def test_bad_dimensions_name_what_is_wrong(warehouse, seeded_store: Store, dimension, message):
    with warehouse.connect() as conn, pytest.raises(DimensionError, match=message):
        calculate_npmi(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id]), dimension,
                       Dimension(name="status", parameters={"value": "OK"}))
