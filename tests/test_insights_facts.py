"""The insights' derived tables on real warehouses: the dimension facts (assets/insights/facts.py) hold exactly what
the child tables say after every kind of change the extract makes, and every insight reads the same from them and
from the hourly rollups as from the tables themselves."""

from __future__ import annotations

import mlflow
import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.tracing.client import TracingClient

from assets.insights import registry
from assets.insights.dimensions import CorrelationsRequest, correlations, dimensions_discovery, rank_against
from assets.insights.facts import HOUR_MS, facts_current, refresh_facts
from assets.insights.npmi import Dimension, calculate_npmi
from assets.insights.outcomes import OutcomeRules, outcomes
from assets.insights.breakdowns import TagQuery, tag_metrics, tags_discovery, tools_discovery
from assets.insights.queries import InsightsQuery, TimeBucket
from assets.insights.rollups import write_rollups
from assets.insights.registry import Population
from assets.traces.extract import extract_traces
from resources.agent.traffic import seed_demo
from resources.trace_sources import SqlTrackingStore
from resources.warehouse import sqlalchemy_engine
from tests.conftest import Store


def refreshed(path: str):
    """The insights' derived tables brought up to date: the dimension facts (returned) and the hourly rollups."""
    with sqlalchemy_engine(path, read_only=False).begin() as conn:
        write_rollups(conn)
        return refresh_facts(conn)


def assert_facts_are_the_child_tables(path: str) -> None:
    """The facts are the stored kinds' values of the warehouse's traces now, no more (none of a trace deleted or
    copied again), no fewer; each (name, value) has one number; the hourly counts are the facts'."""
    with sqlalchemy_engine(path).connect() as conn:
        assert facts_current(conn)
        derived = set(conn.execute(sa.select(registry.stored_rows().subquery())).all())
        stored = conn.exec_driver_sql("""
            SELECT f.trace_key, v.name, v.value FROM trace_dimension_values f JOIN dimension_values v USING (value_id)
        """).all()
        assert len(stored) == len(set(stored)) and set(stored) == derived and derived
        assert conn.exec_driver_sql(
            "SELECT count(DISTINCT value_id) = count(*) AND count(DISTINCT (name, value)) = count(*) "
            "FROM dimension_values").scalar()
        hours = conn.exec_driver_sql(f"""
            SELECT t.experiment_id, t.timestamp_ms // {HOUR_MS} * {HOUR_MS}, t.evaluation, f.value_id, count(*)
            FROM trace_dimension_values f JOIN traces t USING (trace_key) GROUP BY ALL""").all()
        assert set(conn.exec_driver_sql("SELECT * FROM dimension_value_hours").all()) == set(hours)


def test_facts_follow_new_changed_and_deleted_traces(store: Store, warehouse_path: str):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    first = refreshed(warehouse_path)
    assert first.traces_added == len(store.trace_ids) and first.facts_deleted == 0
    assert_facts_are_the_child_tables(warehouse_path)
    assert refreshed(warehouse_path).traces_added == 0  # nothing new: nothing read

    # a late tag (the trace is copied again under a new key), a deleted trace, new traces
    mlflow.set_trace_tag(store.trace_ids[0], "persona", "newcomer")
    TracingClient(store.uri).delete_traces(experiment_id=store.experiment_id, trace_ids=[store.trace_ids[1]])
    seed_demo(5, experiment="llmops-demo", seed=99)
    extract_traces(source, warehouse_path)
    with sqlalchemy_engine(warehouse_path).connect() as conn:
        assert not facts_current(conn)
    again = refreshed(warehouse_path)
    assert again.traces_added == 6 and again.facts_deleted > 0
    assert_facts_are_the_child_tables(warehouse_path)


def insights_answers(path: str, experiment_ids: list[str], targets: list[dict]) -> list:
    """What discovery, correlations (against each target), root causes, tool and tag discovery and tag metrics
    (every key, each bucket size) answer over the warehouse at `path`:
    over all time, over whole hours (the hourly counts) and over a range cut inside hours (the facts), with and
    without evaluation traces."""
    hour = HOUR_MS
    ranges = [{}, {"start_time": 0, "end_time": 2**40 // hour * hour - 1}, {"start_time": 1, "end_time": 2**52}]
    found = []
    with sqlalchemy_engine(path).connect() as conn:
        keys = [key for (key,) in conn.exec_driver_sql("SELECT DISTINCT key FROM trace_tags ORDER BY 1")]
        for time_range in ranges:
            query = InsightsQuery(experiment_ids=experiment_ids, **time_range)
            found += [dimensions_discovery(conn, query), tools_discovery(conn, query), tags_discovery(conn, query)]
            found += [tag_metrics(conn, TagQuery(**{**query.model_dump(), "time_bucket": bucket}, tag_key=key, limit=2))
                      for key in keys for bucket in TimeBucket]
            for target, evaluations in ((target, evaluations) for target in targets for evaluations in (False, True)):
                found.append(correlations(conn, CorrelationsRequest(
                    experiment_ids=experiment_ids, dimension=target, limit=None, include_evaluations=evaluations,
                    **time_range)))
        for evaluations in (False, True):
            every = Population(experiment_ids=experiment_ids, include_evaluations=evaluations)
            found += rank_against(conn, every, outcomes(conn, every, OutcomeRules()))
    return [answer.model_dump() for answer in found]


def test_every_insight_reads_the_same_from_the_facts_as_from_the_child_tables(store: Store, warehouse_path: str):
    mlflow.log_feedback(trace_id=store.trace_ids[3], name="user_thumbs", value=False,
                        source=AssessmentSource(AssessmentSourceType.HUMAN, "u"))
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    targets = [{"name": "status", "parameters": {"value": "ERROR"}},
               {"name": "assessment.user_thumbs", "parameters": {"value": False}},
               {"name": "tools.web.fetch", "parameters": {"value": "error"}}]
    from_child_tables = insights_answers(warehouse_path, [store.experiment_id], targets)
    refreshed(warehouse_path)
    assert insights_answers(warehouse_path, [store.experiment_id], targets) == from_child_tables


@pytest.mark.parametrize("stale", [False, True], ids=["facts current", "facts behind the extract"])
def test_correlations_count_what_npmi_counts_pair_by_pair(store: Store, warehouse_path: str, stale: bool):
    source = SqlTrackingStore(store.uri)
    extract_traces(source, warehouse_path)
    refreshed(warehouse_path)
    if stale:
        mlflow.set_trace_tag(store.trace_ids[5], "persona", "newcomer")
        extract_traces(source, warehouse_path)
    target = Dimension(name="status", parameters={"value": "ERROR"})
    request = CorrelationsRequest(experiment_ids=[store.experiment_id], dimension=target, limit=None)
    with sqlalchemy_engine(warehouse_path).connect() as conn:
        assert facts_current(conn) is not stale
        ranked = correlations(conn, request)
        assert len(ranked.data) > 10
        for candidate in ranked.data:
            pair = calculate_npmi(conn, request, target, candidate.dimension)
            assert (pair.dimension2_count, pair.joint_count) == (candidate.count, candidate.intersection_count)
