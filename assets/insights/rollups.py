"""Tables the insights assets write into the warehouse: hourly and daily rollups, and `root_causes` (no Dagster).

Rollups hold, per experiment and UTC bucket, what the insights API computes on the fly, so dashboards and SQL
users read small tables; `mlflow_spans_hourly` holds the span counts, latencies and costs MLflow's trace metrics
sum (assets/insights/trace_metrics.py). `root_causes` answers "what goes with bad outcomes": for each outcome the
outcomes file declares (assets/insights/outcomes.py), every dimension value that goes with it more than chance, at
least `min_support` times, ranked by NPMI and named in plain words. Both are rebuilt whole in one transaction at
each materialization.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from assets.insights import registry
from assets.insights.breakdowns import TEXT_VALUE, TOOL_SPAN, USER_TAG, tool_measures
from assets.insights.dimensions import CorrelationsResponse, rank_against
from assets.insights.outcomes import OutcomeRules, outcomes
from assets.insights.queries import (
    ASSESSMENTS,
    ROLLUPS_STATE,
    SPANS,
    TAGS,
    TRACES,
    VALID_FEEDBACK,
    TimeBucket,
    bucket_column,
    latency_measures,
    percentiles,
    record_version,
    token_measures,
    traces_version,
    volume_measures,
)
from assets.insights.registry import Dimension, Population

GRAINS = {TimeBucket.hour: "hourly", TimeBucket.day: "daily"}


def rollup_queries() -> dict[str, sa.Select]:
    """Table name → the query that fills it."""
    categorical = sa.case(
        (ASSESSMENTS.c.value_type == "numeric", sa.null()),
        (ASSESSMENTS.c.value_type == "boolean", sa.cast(ASSESSMENTS.c.bool_value, sa.String)),
        else_=TEXT_VALUE,
    )
    value = ASSESSMENTS.c.numeric_value
    tables = {}
    for grain, suffix in GRAINS.items():
        def keys(table: sa.TableClause, grain: TimeBucket = grain) -> tuple[sa.ColumnElement, sa.ColumnElement]:
            return table.c.experiment_id, bucket_column(grain, table)

        tables[f"insights_traffic_{suffix}"] = sa.select(
            *keys(TRACES), *volume_measures(), *latency_measures(TRACES.c.execution_time_ms), *token_measures()
        ).group_by(*keys(TRACES))
        tables[f"insights_tools_{suffix}"] = (
            sa.select(*keys(SPANS), SPANS.c.name.label("tool_name"), *tool_measures())
            .where(TOOL_SPAN).group_by(*keys(SPANS), SPANS.c.name)
        )
        tables[f"insights_tags_{suffix}"] = (
            sa.select(*keys(TAGS), TAGS.c.key, TAGS.c.value, sa.func.count().label("trace_count"))
            .where(USER_TAG).group_by(*keys(TAGS), TAGS.c.key, TAGS.c.value)
        )
        tables[f"insights_assessments_{suffix}"] = (
            sa.select(
                *keys(ASSESSMENTS), ASSESSMENTS.c.name, categorical.label("value"), sa.func.count().label("count"),
                sa.func.avg(value).label("avg"), sa.func.min(value).label("min"), sa.func.max(value).label("max"),
                *percentiles(value, {"p50": 0.5, "p90": 0.9}),
            ).where(VALID_FEEDBACK).group_by(*keys(ASSESSMENTS), ASSESSMENTS.c.name, categorical)
        )
    from assets.insights.trace_metrics import SPAN_ROLLUP, span_rollup_query  # MLflow's modules: only to build

    tables[SPAN_ROLLUP.original.name] = span_rollup_query()
    return tables


def write_rollups(conn: sa.Connection) -> dict[str, int]:
    """Rebuild every rollup table (inside the caller's transaction), and record which warehouse version they
    describe (the API answers whole hours from them while it is the warehouse's); rows per table."""
    rows = {}
    for table, query in rollup_queries().items():
        # Our own queries with no user input in them: their few constants are inlined for CREATE TABLE AS.
        sql = query.compile(conn, compile_kwargs={"literal_binds": True})
        conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {table} AS {sql}")
        rows[table] = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()
    record_version(conn, ROLLUPS_STATE, traces_version(conn))
    return rows


ROOT_CAUSES_COLUMNS = {
    "experiment_id": "VARCHAR NOT NULL",
    "outcome": "VARCHAR NOT NULL", "outcome_value": "VARCHAR NOT NULL",
    "outcome_description": "VARCHAR NOT NULL",  # in plain words: "user_thumbs is false"
    "outcome_parameters": "VARCHAR NOT NULL", "outcome_filter": "VARCHAR",  # JSON; MLflow's search filter
    "outcome_count": "BIGINT NOT NULL", "total_count": "BIGINT NOT NULL", "rank": "INTEGER NOT NULL",
    "dimension": "VARCHAR NOT NULL", "value": "VARCHAR NOT NULL",
    "description": "VARCHAR NOT NULL",  # in plain words: "tool web.fetch failed"
    "parameters": "VARCHAR NOT NULL", "mlflow_filter": "VARCHAR",  # JSON, ready for calculate-npmi; MLflow's filter
    "count": "BIGINT NOT NULL", "intersection_count": "BIGINT NOT NULL", "npmi": "DOUBLE NOT NULL",
    "npmi_smoothed": "DOUBLE", "strength": "VARCHAR NOT NULL", "direction": "VARCHAR NOT NULL",
}
ROOT_CAUSES = sa.table("root_causes", *(sa.column(name) for name in ROOT_CAUSES_COLUMNS))
ROOT_CAUSES_DDL = "CREATE OR REPLACE TABLE root_causes ({})".format(
    ", ".join(f"{name} {kind}" for name, kind in ROOT_CAUSES_COLUMNS.items()))


def positive_causes(ranked: CorrelationsResponse) -> list:
    """The positively associated dimension values only, best first: a value that goes with the outcome no more
    than chance (NPMI <= 0, e.g. a span type every trace has) is no cause."""
    return [found for found in ranked.data if (found.correlation.npmi_score or 0) > 0]


def root_cause_rows(experiment_id: str, outcome: Dimension, ranked: CorrelationsResponse) -> list[dict]:
    causes = positive_causes(ranked)
    about = {
        "experiment_id": experiment_id, "outcome": outcome.name, "outcome_value": ranked.dimension.value,
        "outcome_description": registry.phrase(outcome),
        "outcome_parameters": json.dumps(outcome.parameters, sort_keys=True),
        "outcome_filter": registry.mlflow_filter_string(outcome), "outcome_count": ranked.dimension.count,
        "total_count": ranked.total_count,
    }
    return [
        {
            **about, "rank": rank, "dimension": found.dimension.name, "value": found.value,
            "description": found.description, "parameters": json.dumps(found.dimension.parameters, sort_keys=True),
            "mlflow_filter": found.mlflow_filter, "count": found.count, "intersection_count": found.intersection_count,
            "npmi": found.correlation.npmi_score, "npmi_smoothed": found.correlation.npmi_smoothed,
            "strength": found.correlation.strength, "direction": found.correlation.direction,
        }
        for rank, found in enumerate(causes, start=1)
    ]


def write_root_causes(conn: sa.Connection, rules: OutcomeRules, include_evaluations: bool = False) -> list[dict]:
    """Rank every dimension against every declared outcome, per experiment, keeping the values that go with it at
    least `rules.min_support` times; rebuild `root_causes` (caller's transaction). Evaluation traces count only
    with `include_evaluations`."""
    rows: list[dict] = []
    experiments = conn.execute(sa.select(TRACES.c.experiment_id).distinct().order_by(TRACES.c.experiment_id)).scalars()
    for experiment_id in list(experiments):
        query = Population(experiment_ids=[experiment_id], include_evaluations=include_evaluations)
        if not (targets := outcomes(conn, query, rules)):
            continue  # nothing went badly (or only evaluation traces did)
        for target, ranked in zip(targets, rank_against(conn, query, targets, rules.min_support)):
            rows.extend(root_cause_rows(experiment_id, target, ranked))
    conn.exec_driver_sql(ROOT_CAUSES_DDL)
    if rows:
        conn.execute(ROOT_CAUSES.insert(), rows)
    return rows
