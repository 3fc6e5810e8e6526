"""Dimensions discovered from the data, NPMI between two of them, and the dimensions that go with one.

What a dimension is, selects and means is the registry's (`assets/insights/registry.py`). `dimensions_discovery`
lists what can be correlated; `calculate_dimensions_npmi` answers the seed's calculate-npmi request; `correlations`
ranks every candidate dimension value by NPMI against one target dimension ("what goes with thumbs-down?") in one
pass over the warehouse, with the same counts `calculate_npmi` gives for each pair.
"""

from __future__ import annotations

import math
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from assets.insights import registry
from assets.insights.npmi import Counts, Dimension, calculate_npmi, npmi
from assets.insights.outcomes import load_outcomes, outcomes
from assets.insights.queries import TRACES, InsightsQuery
from assets.insights.registry import DimensionInfo, Population, population

Strength = Literal["Strong", "Moderate", "Weak"]


class DimensionsDiscoveryResponse(BaseModel):
    data: list[DimensionInfo]


def dimensions_discovery(conn: sa.Connection, query: InsightsQuery) -> DimensionsDiscoveryResponse:
    """Every dimension the population's data has; `session` offers the bad outcomes the outcomes file declares."""
    return DimensionsDiscoveryResponse(data=registry.discover(conn, query, outcomes(conn, query, load_outcomes())))


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


class NpmiRequest(Population):
    dimension1: Dimension
    dimension2: Dimension


class NpmiResponse(BaseModel):
    dimension1: DimensionCount
    dimension2: DimensionCount
    intersection: IntersectionCount
    total_count: int
    correlation: Correlation


def calculate_dimensions_npmi(conn: sa.Connection, request: NpmiRequest) -> NpmiResponse:
    result = calculate_npmi(conn, request, request.dimension1, request.dimension2)
    return NpmiResponse(
        dimension1=DimensionCount(name=request.dimension1.name, value=registry.words(request.dimension1),
                                  count=result.dimension1_count),
        dimension2=DimensionCount(name=request.dimension2.name, value=registry.words(request.dimension2),
                                  count=result.dimension2_count),
        intersection=IntersectionCount(count=result.joint_count), total_count=result.total_count,
        correlation=correlation(result.npmi, result.npmi_smoothed),
    )


# --- every dimension against one ------------------------------------------------------------------------------------


class CorrelationsRequest(Population):
    dimension: Dimension = Field(description="The target, e.g. assessment.user_thumbs = false.")
    limit: int | None = Field(default=10, ge=1, description="Top-k by NPMI; null for all.")
    min_support: int = Field(default=1, ge=1, description="Least traces that have both the target and the dimension.")


class CorrelatedDimension(BaseModel):
    dimension: Dimension
    value: str
    description: str = Field(description="The dimension in plain words, e.g. 'tool web.fetch failed'.")
    mlflow_filter: str | None = Field(description="MLflow's search_traces filter for the same traces (open them in "
                                      "MLflow); null where MLflow's syntax cannot say it.")
    count: int = Field(description="Traces with this dimension value.")
    intersection_count: int = Field(description="Traces with both it and the target.")
    correlation: Correlation


class CorrelationsResponse(BaseModel):
    dimension: DimensionCount
    total_count: int
    data: list[CorrelatedDimension]


def rank_against(
    conn: sa.Connection, query: InsightsQuery, targets: list[Dimension], min_support: int = 1,
    session_outcomes: list[Dimension] | None = None,
) -> list[CorrelationsResponse]:
    """For each target, every candidate dimension value with NPMI (highest first): one pass for all targets.
    `session_outcomes` give the `session` candidates (default: the targets)."""
    # One row per counted trace with a flag per target, so that a single scan of the candidate facts counts each
    # candidate and its co-occurrence with every target.
    flags = sa.select(
        TRACES.c.trace_id,
        *(TRACES.c.trace_id.in_(registry.trace_ids(target)).label(f"t{index}") for index, target in enumerate(targets)),
    ).where(*population(query)).subquery("flags")
    total, *target_counts = conn.execute(
        sa.select(sa.func.count(), *(sa.func.count().filter(flags.c[f"t{i}"]) for i in range(len(targets))))
    ).one()
    parts = registry.candidates(conn, query, targets if session_outcomes is None else session_outcomes)
    facts = sa.union_all(*(
        sa.select(rows.c.trace_id, rows.c.name, rows.c.value, sa.literal(index).label("part"))
        for index, rows in enumerate(part.rows.subquery() for part in parts)
    )).subquery("facts")
    rows = conn.execute(
        sa.select(
            facts.c.part, facts.c.name, facts.c.value, sa.func.count(),
            *(sa.func.count().filter(flags.c[f"t{i}"]) for i in range(len(targets))),
        ).select_from(facts.join(flags, flags.c.trace_id == facts.c.trace_id))
        .group_by(facts.c.part, facts.c.name, facts.c.value)
    ).all()
    subjects = [registry.subject(target) for target in targets]
    ranked: list[list[CorrelatedDimension]] = [[] for _ in targets]
    for part, name, value, n, *joints in rows:
        dimension = Dimension(name=name, parameters=parts[part].parameters(name, value))
        for index, joint in enumerate(joints):
            if joint < min_support or registry.subject(dimension) == subjects[index]:
                continue  # too rare together, or the target's own dimension (another value, its sessions)
            raw, smoothed = npmi(Counts(total, target_counts[index], n, joint))
            ranked[index].append(CorrelatedDimension(
                dimension=dimension, value=value, description=registry.phrase(dimension),
                mlflow_filter=registry.mlflow_filter_string(dimension), count=n, intersection_count=joint,
                correlation=correlation(raw, smoothed),
            ))
    for found in ranked:
        found.sort(key=lambda c: (-c.correlation.npmi_score, -c.intersection_count, c.dimension.name, c.value))
    return [
        CorrelationsResponse(
            dimension=DimensionCount(name=target.name, value=registry.words(target), count=target_counts[index]),
            total_count=total, data=ranked[index],
        )
        for index, target in enumerate(targets)
    ]


def correlations(conn: sa.Connection, request: CorrelationsRequest) -> CorrelationsResponse:
    """Every discovered dimension value ranked by NPMI with the target dimension (highest first); `session`
    candidates are the bad outcomes the outcomes file declares."""
    (response,) = rank_against(conn, request, [request.dimension], request.min_support,
                               outcomes(conn, request, load_outcomes()))
    if request.limit:
        response.data = response.data[: request.limit]
    return response
