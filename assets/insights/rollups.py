"""Tables the insights assets write into the warehouse: hourly and daily rollups, and `root_causes` (no Dagster).

Rollups hold, per experiment and UTC bucket, what the insights API computes on the fly, so dashboards and SQL
users read small tables. `root_causes` answers "what goes with bad outcomes": for each outcome (status ERROR,
each boolean feedback = false, each numeric feedback below its threshold) every discovered dimension value
ranked by NPMI, with support counts. Both are rebuilt whole in one transaction at each materialization.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from assets.insights.breakdowns import TEXT_VALUE, TOOL_SPAN, USER_TAG, tool_measures
from assets.insights.dimensions import CorrelationsResponse, rank_against
from assets.insights.outcomes import OutcomeRules, outcomes
from assets.insights.queries import (
    ASSESSMENTS,
    SPANS,
    TAGS,
    TRACES,
    VALID_FEEDBACK,
    InsightsQuery,
    TimeBucket,
    bucket_column,
    latency_measures,
    percentiles,
    token_measures,
    volume_measures,
)

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
    return tables


def write_rollups(conn: sa.Connection) -> dict[str, int]:
    """Rebuild every rollup table (inside the caller's transaction); rows per table."""
    rows = {}
    for table, query in rollup_queries().items():
        # Our own queries with no user input in them: their few constants are inlined for CREATE TABLE AS.
        sql = query.compile(conn, compile_kwargs={"literal_binds": True})
        conn.exec_driver_sql(f"CREATE OR REPLACE TABLE {table} AS {sql}")
        rows[table] = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()
    return rows


ROOT_CAUSES = sa.table(
    "root_causes", *(sa.column(name) for name in (
        "experiment_id", "outcome", "outcome_value", "outcome_count", "total_count", "rank", "dimension", "value",
        "parameters", "count", "intersection_count", "npmi", "npmi_smoothed", "strength", "direction",
    ))
)
ROOT_CAUSES_DDL = """
CREATE OR REPLACE TABLE root_causes (
    experiment_id VARCHAR NOT NULL, outcome VARCHAR NOT NULL, outcome_value VARCHAR NOT NULL,
    outcome_count BIGINT NOT NULL, total_count BIGINT NOT NULL, rank INTEGER NOT NULL,
    dimension VARCHAR NOT NULL, value VARCHAR NOT NULL, parameters VARCHAR NOT NULL,
    count BIGINT NOT NULL, intersection_count BIGINT NOT NULL, npmi DOUBLE NOT NULL, npmi_smoothed DOUBLE,
    strength VARCHAR NOT NULL, direction VARCHAR NOT NULL
)
"""


def root_cause_rows(experiment_id: str, ranked: CorrelationsResponse) -> list[dict]:
    """The positively associated dimension values only: a value that goes with the outcome no more than chance
    (NPMI <= 0, e.g. a span type every trace has) is no cause."""
    causes = [found for found in ranked.data if (found.correlation.npmi_score or 0) > 0]
    return [
        {
            "experiment_id": experiment_id, "outcome": ranked.dimension.name, "outcome_value": ranked.dimension.value,
            "outcome_count": ranked.dimension.count, "total_count": ranked.total_count, "rank": rank,
            "dimension": found.dimension.name, "value": found.value,
            "parameters": json.dumps(found.dimension.parameters, sort_keys=True), "count": found.count,
            "intersection_count": found.intersection_count, "npmi": found.correlation.npmi_score,
            "npmi_smoothed": found.correlation.npmi_smoothed, "strength": found.correlation.strength,
            "direction": found.correlation.direction,
        }
        for rank, found in enumerate(causes, start=1)
    ]


def write_root_causes(conn: sa.Connection, rules: OutcomeRules) -> list[dict]:
    """Rank every dimension against every outcome, per experiment; rebuild `root_causes` (caller's transaction)."""
    rows: list[dict] = []
    experiments = conn.execute(sa.select(TRACES.c.experiment_id).distinct().order_by(TRACES.c.experiment_id)).scalars()
    for experiment_id in list(experiments):
        query = InsightsQuery(experiment_ids=[experiment_id])
        targets = outcomes(conn, query, rules)
        for ranked in rank_against(conn, query, targets, rules.min_support):
            rows.extend(root_cause_rows(experiment_id, ranked))
    conn.exec_driver_sql(ROOT_CAUSES_DDL)
    if rows:
        conn.execute(ROOT_CAUSES.insert(), rows)
    return rows
