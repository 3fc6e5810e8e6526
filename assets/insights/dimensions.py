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
from assets.insights.facts import facts_current, hourly_counts, present_values
from assets.insights.npmi import Counts, Dimension, calculate_npmi, npmi
from assets.insights.outcomes import load_outcomes, outcomes
from assets.insights.queries import DIMENSION_VALUES, TRACE_DIMENSION_VALUES, TRACES, InsightsQuery
from assets.insights.registry import DimensionInfo, Population, population

Strength = Literal["Strong", "Moderate", "Weak"]


class DimensionsDiscoveryResponse(BaseModel):
    data: list[DimensionInfo]


def dimensions_discovery(conn: sa.Connection, query: InsightsQuery) -> DimensionsDiscoveryResponse:
    """Every dimension the population's data has; `session` offers the bad outcomes the outcomes file declares."""
    present = present_values(conn, query) if facts_current(conn) else None
    return DimensionsDiscoveryResponse(data=registry.discover(conn, query, outcomes(conn, query, load_outcomes()),
                                                              present))


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
    found = registry.candidates(conn, query, targets if session_outcomes is None else session_outcomes)
    conditions = [c for c in found if isinstance(c, registry.TraceCondition)]
    live = [c for c in found if isinstance(c, registry.Facts)]
    # One row per counted trace with a flag per target: one scan counts the targets and the candidates a
    # condition on the trace's row decides, alone and with each target; the facts of a range cut inside hours
    # join it.
    target_flags = [registry.selects(target).label(f"t{index}")
                    for index, target in enumerate(targets)]
    flagged = sa.select(TRACES.c.trace_key, *target_flags).where(*population(query))
    scan = flagged.add_columns(*(c.condition.label(f"c{k}") for k, c in enumerate(conditions))).subquery("scan")
    total, *counted = conn.execute(sa.select(sa.func.count(), *(
        sa.func.count().filter(sa.and_(*flag))
        for flag in [(scan.c[f"t{i}"],) for i in range(len(targets))]
        + [(scan.c[f"c{k}"], *target) for k in range(len(conditions)) for target in [(), *(
            (scan.c[f"t{i}"],) for i in range(len(targets)))]]))).one()
    target_counts, per_condition = counted[:len(targets)], counted[len(targets):]
    # (dimension name, value, parameters, traces with it, with it and each target)
    results = [(c.name, c.value, c.parameters, *per_condition[k * (len(targets) + 1):(k + 1) * (len(targets) + 1)])
               for k, c in enumerate(conditions)]

    def counts(flags: sa.FromClause) -> list[sa.ColumnElement]:
        return [sa.func.count().label("n"), *(sa.func.count().filter(flags.c[f"t{i}"]).label(f"j{i}")
                                              for i in range(len(targets)))]

    # Each target's counted traces, read where its selector reads them (registry.counted_keys).
    target_keys = [registry.counted_keys(target, query) for target in targets]
    selects = []
    if facts_current(conn):
        # The stored facts, counted per value id and then named: grouping 28M rows by an integer, not two strings.
        production_only = not (isinstance(query, Population) and query.include_evaluations)
        if (hourly := hourly_counts(query, production_only)) is not None:
            # Whole hours: each value's traces from the hourly counts, and only the targets' traces joined to the
            # facts for the counts together (a smaller hash table than every trace's).
            keyed = sa.union_all(*(
                sa.select(list(keys.c)[0].label("trace_key"),
                          *(sa.literal(i == index).label(f"t{i}") for i in range(len(targets))))
                for index, keys in enumerate(keys.subquery() for keys in target_keys))).subquery()
            hit = (sa.select(keyed.c.trace_key, *(sa.func.bool_or(keyed.c[f"t{i}"]).label(f"t{i}")
                                                  for i in range(len(targets))))
                   .group_by(keyed.c.trace_key).subquery("hit"))
            together = (sa.select(TRACE_DIMENSION_VALUES.c.value_id, *counts(hit)[1:])
                        .select_from(TRACE_DIMENSION_VALUES.join(hit, hit.c.trace_key == TRACE_DIMENSION_VALUES.c.trace_key))
                        .group_by(TRACE_DIMENSION_VALUES.c.value_id).subquery("together"))
            alone = hourly.subquery("alone")
            stored = (sa.select(alone.c.value_id, alone.c.n,
                                *(sa.func.coalesce(together.c[f"j{i}"], 0).label(f"j{i}") for i in range(len(targets))))
                      .select_from(alone.outerjoin(together, together.c.value_id == alone.c.value_id))
                      .subquery("stored"))
        else:
            own = flagged.subquery("flags")
            stored = (sa.select(TRACE_DIMENSION_VALUES.c.value_id, *counts(own))
                      .select_from(TRACE_DIMENSION_VALUES.join(own, own.c.trace_key == TRACE_DIMENSION_VALUES.c.trace_key))
                      .group_by(TRACE_DIMENSION_VALUES.c.value_id).subquery("stored"))
        selects.append(
            sa.select(sa.literal(len(live)).label("part"), DIMENSION_VALUES.c.name, DIMENSION_VALUES.c.value,
                      *(column for column in stored.c if column.name != "value_id"))
            .select_from(stored.join(DIMENSION_VALUES, DIMENSION_VALUES.c.value_id == stored.c.value_id))
            .where(DIMENSION_VALUES.c.offered))
        parameters = [*(part.parameters for part in live), registry.stored_parameters]
    else:  # an extract changed the traces since the facts were kept: read the stored kinds from the child tables
        live.append(registry.stored_candidates(query))
        parameters = [part.parameters for part in live]
    # The other candidates' rows are the counted traces' already: each target is a semi join of them against
    # its counted keys, not a join of them to every counted trace flagged (at 1M traces: 91-95 -> 52 ms for the
    # feedback candidates).
    for index, part in enumerate(live):
        rows = part.rows.subquery()
        name = (sa.literal(part.prefix) + rows.c.name) if part.prefix else rows.c.name
        selects.append(sa.select(sa.literal(index).label("part"), name.label("name"), rows.c.value,
                                 sa.func.count().label("n"),
                                 *(sa.func.count().filter(rows.c.trace_key.in_(keys)).label(f"j{i}")
                                   for i, keys in enumerate(target_keys)))
                       .group_by(rows.c.name, rows.c.value))
    results += [(name, value, parameters[part](name, value), n, *joints)
                for part, name, value, n, *joints in conn.execute(sa.union_all(*selects))]
    subjects = [registry.subject(target) for target in targets]
    ranked: list[list[CorrelatedDimension]] = [[] for _ in targets]
    for name, value, dimension_parameters, n, *joints in results:
        dimension = Dimension(name=name, parameters=dimension_parameters)
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
