"""Assessment, tool and tag insights over the warehouse: discovery and metrics (no Dagster).

Like the traffic queries, each takes experiment ids, an inclusive time range and a bucket size, and counts
things by their trace's time. Assessments are the valid (not overridden) feedback; tools are TOOL spans;
tags leave out MLflow's own `mlflow.*` keys.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from assets.insights.queries import (
    ASSESSMENTS,
    SPANS,
    TAGS,
    VALID_FEEDBACK,
    InsightsQuery,
    LatencyStats,
    bucket_column,
    bucket_start,
    latency_measures,
    per_transaction,
    percentiles,
    population_filter,
    rollup_hours,
    summary_and_series,
)

AssessmentType = Literal["boolean", "numeric", "string"]
TOOL_SPAN = SPANS.c.span_type == "TOOL"
USER_TAG = sa.not_(TAGS.c.key.startswith("mlflow."))
# A string view of any assessment value, for string (and JSON) assessments.
TEXT_VALUE = sa.func.coalesce(ASSESSMENTS.c.string_value, ASSESSMENTS.c.value_json)
# Hourly rollups (assets/insights/rollups.py) whose sums answer whole hours exactly while they are current.
TOOLS_HOURLY = sa.table("insights_tools_hourly", sa.column("experiment_id"), sa.column("time_bucket"),
                        sa.column("tool_name"), sa.column("calls"), sa.column("error_count"))
TAGS_HOURLY = sa.table("insights_tags_hourly", sa.column("experiment_id"), sa.column("time_bucket"), sa.column("key"),
                       sa.column("value"), sa.column("trace_count"))


class AssessmentQuery(InsightsQuery):
    assessment_name: str = Field(min_length=1)


class ToolQuery(InsightsQuery):
    tool_name: str = Field(min_length=1)


class TagQuery(InsightsQuery):
    tag_key: str = Field(min_length=1)
    limit: int = Field(default=10, ge=1, le=1000, description="How many of the most frequent values.")


# --- assessments -------------------------------------------------------------------------------------------------


class AssessmentInfo(BaseModel):
    name: str
    assessment_type: AssessmentType
    count: int
    sources: list[str] = Field(description="Source types that logged it (HUMAN, LLM_JUDGE, CODE).")


class AssessmentDiscoveryResponse(BaseModel):
    data: list[AssessmentInfo]


class ValueCount(BaseModel):
    value: str
    count: int


class AssessmentStats(BaseModel):
    count: int
    true_count: int | None = None  # boolean
    false_count: int | None = None
    true_rate: float | None = None
    avg: float | None = None  # numeric
    p50: float | None = None
    p90: float | None = None
    min: float | None = None
    max: float | None = None
    values: list[ValueCount] | None = None  # string: every value with its count, most frequent first


class AssessmentPoint(AssessmentStats):
    time_bucket: int


class AssessmentMetricsResponse(BaseModel):
    assessment_name: str
    assessment_type: AssessmentType
    summary: AssessmentStats
    time_series: list[AssessmentPoint]


def detected_type() -> sa.ColumnElement[str]:
    """boolean or numeric when every value of the name is; string otherwise (JSON values included)."""
    return sa.case(
        (sa.func.bool_and(ASSESSMENTS.c.value_type == "boolean"), "boolean"),
        (sa.func.bool_and(ASSESSMENTS.c.value_type == "numeric"), "numeric"),
        else_="string",
    )


def assessments_discovery(conn: sa.Connection, query: InsightsQuery) -> AssessmentDiscoveryResponse:
    """The feedback names of the population, with their detected type, count and sources (once per transaction:
    discovery and correlations need it for the outcomes and again for the candidates)."""
    return per_transaction(conn, ("assessments_discovery", tuple(query.experiment_ids), query.start_time,
                                  query.end_time), lambda: _assessments_discovery(conn, query))


def _assessments_discovery(conn: sa.Connection, query: InsightsQuery) -> AssessmentDiscoveryResponse:
    rows = conn.execute(
        sa.select(
            ASSESSMENTS.c.name, detected_type().label("assessment_type"), sa.func.count().label("count"),
            sa.func.array_agg(sa.distinct(ASSESSMENTS.c.source_type)).label("sources"),
        ).select_from(ASSESSMENTS).where(*population_filter(query, ASSESSMENTS), VALID_FEEDBACK)
        .group_by(ASSESSMENTS.c.name).order_by(ASSESSMENTS.c.name)
    ).mappings().all()
    return AssessmentDiscoveryResponse(data=[AssessmentInfo(**{**row, "sources": sorted(row["sources"])}) for row in rows])


def assessment_type(conn: sa.Connection, query: InsightsQuery, name: str) -> AssessmentType | None:
    """The detected type of the feedback `name` in the population, None when it has none."""
    return conn.execute(
        sa.select(detected_type()).select_from(ASSESSMENTS)
        .where(*population_filter(query, ASSESSMENTS), VALID_FEEDBACK, ASSESSMENTS.c.name == name).having(sa.func.count() > 0)
    ).scalar()


def _value_counts(conn: sa.Connection, query: InsightsQuery, where: tuple, by_bucket: bool) -> dict[int | None, list]:
    bucket = bucket_column(query.time_bucket, ASSESSMENTS) if by_bucket else sa.null().label("time_bucket")
    rows = conn.execute(
        sa.select(bucket, TEXT_VALUE.label("value"), sa.func.count().label("count"))
        .select_from(ASSESSMENTS).where(*population_filter(query, ASSESSMENTS), *where)
        .group_by(*([bucket] if by_bucket else []), TEXT_VALUE).order_by(sa.desc("count"), TEXT_VALUE)
    ).all()
    counts: dict[int | None, list] = {}
    for time_bucket, value, n in rows:
        counts.setdefault(time_bucket, []).append(ValueCount(value=value, count=n))
    return counts


def assessment_metrics(conn: sa.Connection, query: AssessmentQuery) -> AssessmentMetricsResponse | None:
    """Type-aware metrics of one feedback name; None when the population has no such feedback."""
    kind = assessment_type(conn, query, query.assessment_name)
    if kind is None:
        return None
    where = (VALID_FEEDBACK, ASSESSMENTS.c.name == query.assessment_name)
    count = sa.func.count().label("count")
    if kind == "boolean":
        trues = sa.func.count().filter(ASSESSMENTS.c.bool_value)
        measures = [
            count, trues.label("true_count"), sa.func.count().filter(sa.not_(ASSESSMENTS.c.bool_value)).label("false_count"),
            (sa.cast(trues, sa.Double) / sa.func.count()).label("true_rate"),
        ]
    elif kind == "numeric":
        value = ASSESSMENTS.c.numeric_value
        measures = [
            count, sa.func.avg(value).label("avg"), *percentiles(value, {"p50": 0.5, "p90": 0.9}),
            sa.func.min(value).label("min"), sa.func.max(value).label("max"),
        ]
    else:
        measures = [count]
    summary, series = summary_and_series(conn, query, measures, table=ASSESSMENTS, where=where)
    if kind == "string":
        summary["values"] = _value_counts(conn, query, where, by_bucket=False).get(None, [])
        per_bucket = _value_counts(conn, query, where, by_bucket=True)
        for point in series:
            point["values"] = per_bucket.get(point["time_bucket"], [])
    return AssessmentMetricsResponse(
        assessment_name=query.assessment_name, assessment_type=kind, summary=AssessmentStats(**summary),
        time_series=[AssessmentPoint(**point) for point in series],
    )


# --- tools -------------------------------------------------------------------------------------------------------


class ToolInfo(BaseModel):
    """A tool's calls and failed calls (how many traces used it: calculate-npmi on `tools.<name>` = used)."""

    name: str
    calls: int
    error_count: int


class ToolDiscoveryResponse(BaseModel):
    data: list[ToolInfo]


class ToolStats(LatencyStats):
    calls: int
    error_count: int
    error_rate: float | None


class ToolPoint(ToolStats):
    time_bucket: int


class ToolMetricsResponse(BaseModel):
    tool_name: str
    summary: ToolStats
    time_series: list[ToolPoint]


def tools_discovery(conn: sa.Connection, query: InsightsQuery) -> ToolDiscoveryResponse:
    if (hours := rollup_hours(conn, query, TOOLS_HOURLY)) is not None:
        name = TOOLS_HOURLY.c.tool_name.label("name")
        counts = sa.select(name, sa.func.sum(TOOLS_HOURLY.c.calls).label("calls"),
                           sa.func.sum(TOOLS_HOURLY.c.error_count).label("error_count")).where(*hours).group_by(name)
    else:
        name = SPANS.c.name
        counts = (sa.select(name, sa.func.count().label("calls"),
                            sa.func.count().filter(SPANS.c.status == "ERROR").label("error_count"))
                  .where(*population_filter(query, SPANS), TOOL_SPAN).group_by(name))
    rows = conn.execute(counts.order_by(sa.desc("calls"), name)).mappings().all()
    return ToolDiscoveryResponse(data=[ToolInfo(**row) for row in rows])


def tool_measures() -> list[sa.ColumnElement]:
    errors = sa.func.count().filter(SPANS.c.status == "ERROR")
    return [
        sa.func.count().label("calls"), errors.label("error_count"),
        (sa.cast(errors, sa.Double) / sa.func.nullif(sa.func.count(), 0)).label("error_rate"),
        *latency_measures(SPANS.c.duration_ms),
    ]


def tool_metrics(conn: sa.Connection, query: ToolQuery) -> ToolMetricsResponse:
    summary, series = summary_and_series(
        conn, query, tool_measures(), table=SPANS, where=(TOOL_SPAN, SPANS.c.name == query.tool_name)
    )
    return ToolMetricsResponse(
        tool_name=query.tool_name, summary=ToolStats(**summary), time_series=[ToolPoint(**p) for p in series]
    )


# --- tags --------------------------------------------------------------------------------------------------------


class TagInfo(BaseModel):
    key: str
    trace_count: int
    distinct_values: int


class TagDiscoveryResponse(BaseModel):
    data: list[TagInfo]


class TagStats(BaseModel):
    trace_count: int = Field(description="Traces that carry the tag.")
    distinct_values: int
    values: list[ValueCount] = Field(description="The `limit` most frequent values, most frequent first.")


class TagPoint(BaseModel):
    time_bucket: int
    trace_count: int
    values: list[ValueCount]


class TagMetricsResponse(BaseModel):
    tag_key: str
    summary: TagStats
    time_series: list[TagPoint]


def tags_discovery(conn: sa.Connection, query: InsightsQuery) -> TagDiscoveryResponse:
    if (hours := rollup_hours(conn, query, TAGS_HOURLY)) is not None:
        key, value, traces = TAGS_HOURLY.c.key, TAGS_HOURLY.c.value, sa.func.sum(TAGS_HOURLY.c.trace_count)
        where = hours
    else:
        key, value, traces = TAGS.c.key, TAGS.c.value, sa.func.count()
        where = [*population_filter(query, TAGS), USER_TAG]
    rows = conn.execute(
        sa.select(key, traces.label("trace_count"), sa.func.count(sa.distinct(value)).label("distinct_values"))
        .where(*where).group_by(key).order_by(sa.desc("trace_count"), key)
    ).mappings().all()
    return TagDiscoveryResponse(data=[TagInfo(**row) for row in rows])


def _tag_metrics_from_rollup(conn: sa.Connection, query: TagQuery,
                             hours: list[sa.ColumnElement[bool]]) -> TagMetricsResponse:
    """tag_metrics summed from the hourly rollup: each value's count per bucket, ranked here."""
    bucket = bucket_start(TAGS_HOURLY.c.time_bucket, query.time_bucket.milliseconds).label("time_bucket")
    per_bucket: dict[int, dict[str, int]] = {}
    for time_bucket, value, count in conn.execute(
            sa.select(bucket, TAGS_HOURLY.c.value, sa.func.sum(TAGS_HOURLY.c.trace_count))
            .where(*hours, TAGS_HOURLY.c.key == query.tag_key).group_by(bucket, TAGS_HOURLY.c.value)):
        per_bucket.setdefault(time_bucket, {})[value] = int(count)
    every: dict[str, int] = {}
    for counts in per_bucket.values():
        for value, count in counts.items():
            every[value] = every.get(value, 0) + count

    def top(counts: dict[str, int]) -> list[ValueCount]:
        # as the SQL ranking: most frequent first, then by value (byte order; NULL last)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] is None, item[0] or ""))
        return [ValueCount(value=value, count=count) for value, count in ordered[: query.limit]]

    return TagMetricsResponse(
        tag_key=query.tag_key,
        summary=TagStats(trace_count=sum(every.values()), distinct_values=sum(v is not None for v in every),
                         values=top(every)),
        time_series=[TagPoint(time_bucket=b, trace_count=sum(per_bucket[b].values()), values=top(per_bucket[b]))
                     for b in sorted(per_bucket)],
    )


def tag_metrics(conn: sa.Connection, query: TagQuery) -> TagMetricsResponse:
    # The rollup holds the user tags only (not MLflow's own `mlflow.*`).
    if not query.tag_key.startswith("mlflow.") and (hours := rollup_hours(conn, query, TAGS_HOURLY)) is not None:
        return _tag_metrics_from_rollup(conn, query, hours)

    def ranked(bucket: sa.ColumnElement | None) -> list:
        """The `limit` most frequent values, per bucket when one is given."""
        group = [bucket] if bucket is not None else []
        n = sa.func.count()
        rank = sa.func.row_number().over(partition_by=group or None, order_by=(n.desc(), TAGS.c.value)).label("rank")
        counts = (
            sa.select(*group, TAGS.c.value, n.label("count"), rank).select_from(TAGS)
            .where(*population_filter(query, TAGS), TAGS.c.key == query.tag_key).group_by(*group, TAGS.c.value).subquery()
        )
        order = [counts.c.time_bucket] if group else []
        return conn.execute(
            sa.select(counts).where(counts.c.rank <= query.limit).order_by(*order, counts.c.rank)
        ).mappings().all()

    summary, series = summary_and_series(
        conn, query,
        [sa.func.count().label("trace_count"), sa.func.count(sa.distinct(TAGS.c.value)).label("distinct_values")],
        table=TAGS, where=(TAGS.c.key == query.tag_key,),
    )
    per_bucket: dict[int, list[ValueCount]] = {}
    for row in ranked(bucket_column(query.time_bucket, TAGS)):
        per_bucket.setdefault(row["time_bucket"], []).append(ValueCount(value=row["value"], count=row["count"]))
    top = [ValueCount(value=row["value"], count=row["count"]) for row in ranked(None)]
    return TagMetricsResponse(
        tag_key=query.tag_key, summary=TagStats(**summary, values=top),
        time_series=[
            TagPoint(time_bucket=p["time_bucket"], trace_count=p["trace_count"], values=per_bucket[p["time_bucket"]])
            for p in series
        ],
    )
