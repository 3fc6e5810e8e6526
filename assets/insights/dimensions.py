"""Dimensions discovered from the data, NPMI between two of them, and the dimensions that go with one.

`dimensions_discovery` lists what can be correlated (tools, tags and assessments come from the population's
own data); `calculate_dimensions_npmi` answers the seed's calculate-npmi request; `correlations` ranks every
candidate dimension value by NPMI against one target dimension ("what goes with thumbs-down?") in one
pass over the warehouse, with the same counts `calculate_npmi` gives for each pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from assets.insights.breakdowns import (
    TEXT_VALUE,
    TOOL_SPAN,
    USER_TAG,
    assessments_discovery,
    tags_discovery,
    tools_discovery,
)
from assets.insights.npmi import (
    OPERATORS,
    Counts,
    Dimension,
    calculate_npmi,
    npmi,
    threshold,
    trace_ids,
)
from assets.insights.queries import (
    ASSESSMENTS,
    SPANS,
    TAGS,
    TRACES,
    VALID_FEEDBACK,
    InsightsQuery,
    population_filter,
)

ENUM_LIMIT = 50  # tags with at most this many values list them as enum_values
TOOL_STATES = ["used", "error", "success"]
Strength = Literal["Strong", "Moderate", "Weak"]


class DimensionParameter(BaseModel):
    name: str
    type: Literal["string", "number", "enum", "boolean"]
    required: bool = True
    description: str | None = None
    enum_values: list[str] | None = None


class DimensionInfo(BaseModel):
    name: str
    display_name: str
    description: str
    parameters: list[DimensionParameter]


class DimensionsDiscoveryResponse(BaseModel):
    data: list[DimensionInfo]


def _threshold_parameters(what: str) -> list[DimensionParameter]:
    return [
        DimensionParameter(name="threshold", type="number", description=what),
        DimensionParameter(name="operator", type="enum", required=False, enum_values=list(OPERATORS),
                           description="Comparison with the threshold; default '>'."),
    ]


def _value_parameter(values: list[str] | None, description: str) -> list[DimensionParameter]:
    kind = "enum" if values is not None else "string"
    return [DimensionParameter(name="value", type=kind, enum_values=values, description=description)]


def _distinct(conn: sa.Connection, column: sa.ColumnElement, table: sa.TableClause, query: InsightsQuery,
              *where: sa.ColumnElement[bool]) -> list[str]:
    select = sa.select(column).distinct().where(*population_filter(query, table), *where, column.is_not(None))
    return sorted(conn.execute(select).scalars())


def dimensions_discovery(conn: sa.Connection, query: InsightsQuery) -> DimensionsDiscoveryResponse:
    data = [
        DimensionInfo(name="status", display_name="Trace status", description="Traces with this status.",
                      parameters=_value_parameter(_distinct(conn, TRACES.c.status, TRACES, query), "Trace status")),
        DimensionInfo(name="span.type", display_name="Span type", description="Traces with a span of this type.",
                      parameters=_value_parameter(_distinct(conn, SPANS.c.span_type, SPANS, query), "Span type")),
        DimensionInfo(name="latency", display_name="Latency", description="Traces whose latency (ms) compares so.",
                      parameters=_threshold_parameters("Latency in milliseconds")),
    ]
    for tool in tools_discovery(conn, query).data:
        data.append(DimensionInfo(
            name=f"tools.{tool.name}", display_name=f"Tool {tool.name}",
            description=f"Traces that called tool {tool.name!r} (used), had a call fail (error) or none fail (success).",
            parameters=_value_parameter(TOOL_STATES, "used, error or success"),
        ))
    for tag in tags_discovery(conn, query).data:
        values = (
            _distinct(conn, TAGS.c.value, TAGS, query, TAGS.c.key == tag.key) if tag.distinct_values <= ENUM_LIMIT else None
        )
        data.append(DimensionInfo(
            name=f"tags.{tag.key}", display_name=f"Tag {tag.key}", description=f"Traces whose tag {tag.key!r} has this value.",
            parameters=_value_parameter(values, "Tag value"),
        ))
    for info in assessments_discovery(conn, query).data:
        name = f"assessment.{info.name}"
        description = f"Traces with {info.assessment_type} feedback {info.name!r}"
        if info.assessment_type == "numeric":
            parameters = _threshold_parameters("Feedback value")
        elif info.assessment_type == "boolean":
            parameters = [DimensionParameter(name="value", type="boolean", enum_values=["true", "false"])]
        else:
            values = _distinct(conn, TEXT_VALUE, ASSESSMENTS, query, VALID_FEEDBACK, ASSESSMENTS.c.name == info.name)
            parameters = _value_parameter(values if len(values) <= ENUM_LIMIT else None, "Feedback value")
        data.append(DimensionInfo(name=name, display_name=f"Feedback {info.name}", description=description + ".",
                                  parameters=parameters))
    return DimensionsDiscoveryResponse(data=data)


# --- NPMI between two dimensions ------------------------------------------------------------------------------------


class Correlation(BaseModel):
    npmi_score: float | None = Field(description="NPMI in [-1, 1]; null when either dimension matches nothing.")
    npmi_smoothed: float | None = Field(description="NPMI with 0.5 added to each cell of the 2x2 table.")
    strength: Strength | None = Field(description="Strong |npmi| > 0.7, Moderate 0.4-0.7, Weak < 0.4.")
    direction: Literal["positive", "negative", "none"] | None = Field(description="The sign of npmi_score.")


def correlation(raw: float, smoothed: float) -> Correlation:
    if math.isnan(raw):
        return Correlation(npmi_score=None, npmi_smoothed=None if math.isnan(smoothed) else smoothed,
                           strength=None, direction=None)
    size = abs(raw)
    strength: Strength = "Strong" if size > 0.7 else "Moderate" if size >= 0.4 else "Weak"
    direction = "positive" if raw > 0 else "negative" if raw < 0 else "none"
    return Correlation(npmi_score=raw, npmi_smoothed=smoothed, strength=strength, direction=direction)


class DimensionCount(BaseModel):
    name: str
    value: str = Field(description="The parameters in words, e.g. 'false' or '> 1500'.")
    count: int


class IntersectionCount(BaseModel):
    count: int


class NpmiRequest(InsightsQuery):
    dimension1: Dimension
    dimension2: Dimension


class NpmiResponse(BaseModel):
    dimension1: DimensionCount
    dimension2: DimensionCount
    intersection: IntersectionCount
    total_count: int
    correlation: Correlation


def describe(dimension: Dimension) -> str:
    if "threshold" in dimension.parameters:
        return f"{dimension.parameters.get('operator', '>')} {threshold(dimension):g}"
    value = dimension.parameters.get("value", "used" if dimension.name.startswith("tools.") else "")
    return str(value).lower() if isinstance(value, bool) else str(value)


def calculate_dimensions_npmi(conn: sa.Connection, request: NpmiRequest) -> NpmiResponse:
    result = calculate_npmi(conn, request, request.dimension1, request.dimension2)
    return NpmiResponse(
        dimension1=DimensionCount(name=request.dimension1.name, value=describe(request.dimension1),
                                  count=result.dimension1_count),
        dimension2=DimensionCount(name=request.dimension2.name, value=describe(request.dimension2),
                                  count=result.dimension2_count),
        intersection=IntersectionCount(count=result.joint_count), total_count=result.total_count,
        correlation=correlation(result.npmi, result.npmi_smoothed),
    )


# --- every dimension against one ------------------------------------------------------------------------------------


class CorrelationsRequest(InsightsQuery):
    dimension: Dimension = Field(description="The target, e.g. assessment.user_thumbs = false.")
    limit: int | None = Field(default=10, ge=1, description="Top-k by NPMI; null for all.")
    min_support: int = Field(default=1, ge=1, description="Least traces that have both the target and the dimension.")


class CorrelatedDimension(BaseModel):
    dimension: Dimension
    value: str
    count: int = Field(description="Traces with this dimension value.")
    intersection_count: int = Field(description="Traces with both it and the target.")
    correlation: Correlation


class CorrelationsResponse(BaseModel):
    dimension: DimensionCount
    total_count: int
    data: list[CorrelatedDimension]


LATENCY_QUANTILE = 0.9  # latency candidates: slower than the population's p90
NUMERIC_QUANTILE = 0.25  # numeric feedback candidates: below the population's p25


def _candidates(
    conn: sa.Connection, query: InsightsQuery
) -> tuple[sa.CompoundSelect, Callable[[str, str], Dimension]]:
    """Every candidate dimension value as rows (trace_id, name, value), and how each maps to a Dimension.

    Each row is one trace having one dimension value (deduplicated), over the population.
    """
    def rows(name: sa.ColumnElement, value: sa.ColumnElement, table: sa.TableClause, *where) -> sa.Select:
        return (
            sa.select(table.c.trace_id.label("trace_id"), name.label("name"), value.label("value"))
            .where(*population_filter(query, table), *where).distinct()
        )

    tool = sa.literal("tools.") + SPANS.c.name
    failed_calls = sa.func.count().filter(SPANS.c.status == "ERROR")
    parts = [
        rows(sa.literal("status"), TRACES.c.status, TRACES),
        rows(sa.literal("span.type"), SPANS.c.span_type, SPANS, SPANS.c.span_type.is_not(None)),
        rows(tool, sa.literal("used"), SPANS, TOOL_SPAN),
        rows(tool, sa.literal("error"), SPANS, TOOL_SPAN, SPANS.c.status == "ERROR"),
        sa.select(SPANS.c.trace_id, tool, sa.literal("success")).where(*population_filter(query, SPANS), TOOL_SPAN)
        .group_by(SPANS.c.trace_id, SPANS.c.name).having(failed_calls == 0),
        rows(sa.literal("tags.") + TAGS.c.key, TAGS.c.value, TAGS, USER_TAG, TAGS.c.value.is_not(None)),
    ]
    kinds = {info.name: info.assessment_type for info in assessments_discovery(conn, query).data}
    categorical = [name for name, kind in kinds.items() if kind != "numeric"]
    if categorical:
        text = sa.case((ASSESSMENTS.c.value_type == "boolean", sa.cast(ASSESSMENTS.c.bool_value, sa.String)), else_=TEXT_VALUE)
        parts.append(rows(sa.literal("assessment.") + ASSESSMENTS.c.name, text, ASSESSMENTS, VALID_FEEDBACK,
                          ASSESSMENTS.c.name.in_(categorical), ASSESSMENTS.c.value_type.in_(["boolean", "string"])))
    thresholds: dict[str, tuple[str, float]] = {}
    slow = conn.execute(
        sa.select(sa.func.percentile_cont(LATENCY_QUANTILE).within_group(TRACES.c.execution_time_ms))
        .where(*population_filter(query))
    ).scalar()
    if slow is not None:
        thresholds["latency"] = (">", float(slow))
        parts.append(rows(sa.literal("latency"), sa.literal(f"> {slow:g}"), TRACES, TRACES.c.execution_time_ms > slow))
    for name in (name for name, kind in kinds.items() if kind == "numeric"):
        low = conn.execute(
            sa.select(sa.func.percentile_cont(NUMERIC_QUANTILE).within_group(ASSESSMENTS.c.numeric_value))
            .where(*population_filter(query, ASSESSMENTS), VALID_FEEDBACK, ASSESSMENTS.c.name == name)
        ).scalar()
        if low is None:
            continue
        thresholds[f"assessment.{name}"] = ("<", float(low))
        parts.append(rows(sa.literal(f"assessment.{name}"), sa.literal(f"< {low:g}"), ASSESSMENTS, VALID_FEEDBACK,
                          ASSESSMENTS.c.name == name, ASSESSMENTS.c.numeric_value < low))

    def dimension(name: str, value: str) -> Dimension:
        if name in thresholds:
            op, limit = thresholds[name]
            return Dimension(name=name, parameters={"threshold": limit, "operator": op})
        if name.startswith("assessment.") and kinds.get(name.removeprefix("assessment.")) == "boolean":
            return Dimension(name=name, parameters={"value": value == "true"})
        return Dimension(name=name, parameters={"value": value})

    return sa.union_all(*parts), dimension


def rank_against(
    conn: sa.Connection, query: InsightsQuery, targets: list[Dimension], min_support: int = 1
) -> list[CorrelationsResponse]:
    """For each target, every candidate dimension value with NPMI (highest first): one pass for all targets."""
    population = population_filter(query)
    # One row per trace of the population with a flag per target, so that a single scan of the candidate
    # facts counts each candidate and its co-occurrence with every target.
    flags = sa.select(
        TRACES.c.trace_id,
        *(TRACES.c.trace_id.in_(trace_ids(target)).label(f"t{index}") for index, target in enumerate(targets)),
    ).where(*population).subquery("flags")
    total, *target_counts = conn.execute(
        sa.select(sa.func.count(), *(sa.func.count().filter(flags.c[f"t{i}"]) for i in range(len(targets))))
    ).one()
    candidate_rows, dimension = _candidates(conn, query)
    facts = candidate_rows.subquery("facts")
    rows = conn.execute(
        sa.select(
            facts.c.name, facts.c.value, sa.func.count(),
            *(sa.func.count().filter(flags.c[f"t{i}"]) for i in range(len(targets))),
        ).select_from(facts.join(flags, flags.c.trace_id == facts.c.trace_id)).group_by(facts.c.name, facts.c.value)
    ).all()
    ranked: list[list[CorrelatedDimension]] = [[] for _ in targets]
    for name, value, n, *joints in rows:
        for index, joint in enumerate(joints):
            if joint < min_support or name == targets[index].name:
                continue  # too rare together, or a dimension against its own other values
            raw, smoothed = npmi(Counts(total, target_counts[index], n, joint))
            ranked[index].append(CorrelatedDimension(dimension=dimension(name, value), value=value, count=n,
                                                     intersection_count=joint, correlation=correlation(raw, smoothed)))
    for found in ranked:
        found.sort(key=lambda c: (-c.correlation.npmi_score, -c.intersection_count, c.dimension.name, c.value))
    return [
        CorrelationsResponse(
            dimension=DimensionCount(name=target.name, value=describe(target), count=target_counts[index]),
            total_count=total, data=ranked[index],
        )
        for index, target in enumerate(targets)
    ]


def correlations(conn: sa.Connection, request: CorrelationsRequest) -> CorrelationsResponse:
    """Every discovered dimension value ranked by NPMI with the target dimension (highest first)."""
    (response,) = rank_against(conn, request, [request.dimension], request.min_support)
    if request.limit:
        response.data = response.data[: request.limit]
    return response
