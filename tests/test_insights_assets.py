"""The `insights` assets on a real Dagster instance: rollups equal the live queries, root causes equal pairwise
NPMI (the HTML report: tests/test_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.assets import dimension_facts, insights_report, insights_rollups, root_causes
from assets.insights.breakdowns import tools_discovery
from assets.insights.npmi import Dimension, calculate_npmi
from assets.insights.registry import mlflow_filter_string, phrase
from assets.insights.queries import InsightsQuery, TimeBucket, traffic_latency, traffic_volume
from assets.insights.rollups import OutcomeRules, outcomes
from assets.traces.assets import trace_warehouse
from assets.traces.extract import extract_traces
from resources.mlflow import MlflowResource
from resources.trace_sources import SqlTrackingStore
from resources.warehouse import WarehouseResource, sqlalchemy_engine
from tests.conftest import Store

@pytest.fixture(scope="module")
def materialized(seeded_store: Store, tmp_path_factory) -> tuple[str, Path, dg.ExecuteInProcessResult]:
    folder = tmp_path_factory.mktemp("insights_assets")
    path = str(folder / "warehouse.duckdb")
    outcomes_file = folder / "outcomes.yaml"
    outcomes_file.write_text("min_support: 2\nassessments:\n  relevance: {below: 0.5}\n")
    resources = {"mlflow": MlflowResource(tracking_uri=seeded_store.uri), "warehouse": WarehouseResource(path=path)}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [trace_warehouse, dimension_facts, insights_rollups, root_causes, insights_report], resources=resources,
            instance=instance,
            run_config={"ops": {"root_causes": {"config": {"outcomes_file": str(outcomes_file)}},
                                "insights_report": {"config": {"reports_dir": str(folder / "reports")}}}},
        )
    assert result.success
    return path, folder / "reports" / "insights.html", result


def test_rollups_equal_the_live_queries(materialized, seeded_store: Store):
    path, _, result = materialized
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id], time_bucket=TimeBucket.hour)
    with sqlalchemy_engine(path).connect() as conn:
        volume, latency = traffic_volume(conn, query), traffic_latency(conn, query)
        hourly = conn.execute(sa.text(
            "SELECT time_bucket, count, ok_count, error_count, p95_latency FROM insights_traffic_hourly "
            "WHERE experiment_id = :e ORDER BY time_bucket"), {"e": seeded_store.experiment_id}).all()
        tools = {t.name: (t.calls, t.error_count) for t in tools_discovery(conn, query).data}
        tool_rollup = dict(((name, (calls, errors)) for name, calls, errors in conn.execute(sa.text(
            "SELECT tool_name, sum(calls), sum(error_count) FROM insights_tools_daily GROUP BY tool_name"))))
        thumbs = dict(conn.execute(sa.text(
            "SELECT value, sum(count) FROM insights_assessments_daily WHERE name = 'user_thumbs' GROUP BY value")).all())
        relevance = conn.execute(sa.text(
            "SELECT sum(count), min(min), max(max) FROM insights_assessments_daily WHERE name = 'relevance'")).one()
    assert [(p.time_bucket, p.count, p.ok_count, p.error_count) for p in volume.time_series] == [r[:4] for r in hourly]
    assert [p.p95_latency for p in latency.time_series] == pytest.approx([r[4] for r in hourly])
    assert tool_rollup == tools and sum(calls for calls, _ in tools.values()) > 0
    assert set(thumbs) == {"true", "false"} and relevance[0] > 0 and 0 <= relevance[1] <= relevance[2] <= 1
    metadata = result.asset_materializations_for_node("insights_rollups")[0].metadata
    assert metadata["rows_insights_traffic_hourly"].value == len(hourly)
    assert "| experiment | day | traces |" in metadata["latest_days"].value


def test_root_causes_equal_pairwise_npmi_above_the_support(materialized, seeded_store: Store):
    path, _, result = materialized
    with sqlalchemy_engine(path).connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM root_causes ORDER BY outcome, outcome_value, rank")).mappings().all()
        outcomes = {(r["outcome"], r["outcome_value"]) for r in rows}
        assert outcomes >= {("status", "ERROR"), ("assessment.user_thumbs", "false")}
        assert all(r["intersection_count"] >= 2 for r in rows)
        assert rows and all(r["npmi"] > 0 and r["direction"] == "positive" for r in rows)  # causes go with it
        query = InsightsQuery(experiment_ids=[seeded_store.experiment_id])
        assert outcomes == {("status", "ERROR"), ("assessment.user_thumbs", "false"), ("assessment.relevance", "< 0.5")}
        for row in rows:
            pair = calculate_npmi(conn, query, Dimension(name=row["outcome"], parameters=json.loads(row["outcome_parameters"])),
                                  Dimension(name=row["dimension"], parameters=json.loads(row["parameters"])))
            assert (pair.dimension1_count, pair.dimension2_count, pair.joint_count, pair.total_count) == (
                row["outcome_count"], row["count"], row["intersection_count"], row["total_count"])
            assert pair.npmi == pytest.approx(row["npmi"], abs=1e-12)
            cause = Dimension(name=row["dimension"], parameters=json.loads(row["parameters"]))
            assert (row["description"], row["mlflow_filter"]) == (phrase(cause), mlflow_filter_string(cause))
        # named in plain words, the raw filter beside
        assert {r["outcome_description"] for r in rows} == {"status is ERROR", "user_thumbs is false", "relevance < 0.5"}
        failed = next(r for r in rows if r["outcome"] == "status" and r["dimension"] == "tools.sql.query"
                      and r["value"] == "error")
        assert failed["description"] == "tool sql.query failed" and failed["mlflow_filter"] == (
            "span.type = 'TOOL' AND span.name = 'sql.query' AND span.status = 'ERROR'")
    for outcome in outcomes:
        ranks = [r["npmi"] for r in rows if (r["outcome"], r["outcome_value"]) == outcome]
        assert ranks == sorted(ranks, reverse=True)
    assert "| experiment | outcome | goes with |" in result.asset_materializations_for_node("root_causes")[0].metadata[
        "top_root_causes"].value


def test_a_yes_no_judges_no_is_a_bad_outcome(store: Store, warehouse_path: str, tmp_path: Path):
    """MLflow's built-in judges answer yes/no: `no` is the failing answer, a root-cause outcome like a thumbs-down."""
    judge = AssessmentSource(AssessmentSourceType.LLM_JUDGE, "correctness-judge")
    for i, trace_id in enumerate(store.trace_ids[:20]):
        mlflow.log_feedback(trace_id=trace_id, name="correctness", value="no" if i % 3 == 0 else "yes", source=judge)
    extract_traces(SqlTrackingStore(store.uri), warehouse_path)
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    with sqlalchemy_engine(warehouse_path).connect() as conn:
        found = outcomes(conn, query, OutcomeRules())
        no = Dimension(name="assessment.correctness", parameters={"value": "no"})
        assert no in found and not any(d.name == "assessment.tone" for d in found)  # tone's values are not yes/no
        ours = calculate_npmi(conn, query, no, Dimension(name="status", parameters={"value": "ERROR"}))
    theirs = SqlAlchemyStore(store.uri, str(tmp_path / "artifacts")).calculate_trace_filter_correlation(
        [store.experiment_id], "feedback.correctness = 'no'", "attributes.status = 'ERROR'")
    assert (ours.dimension1_count, ours.joint_count) == (theirs.filter1_count, theirs.joint_count) == (7, theirs.joint_count)
