"""NPMI between two trace dimensions ("what goes with thumbs-down?"), over the warehouse (no Dagster).

A dimension selects traces: `status` (value), `span.type` (value), `latency` (threshold + operator),
`tools.<name>` (used | error | success), `tags.<key>` (value), `assessment.<name>` (value for boolean and
string assessments, threshold + operator for numeric ones). Names may contain dots and spaces; every value
is a bound parameter. Counts and NPMI follow MLflow's `calculate_trace_filter_correlation`: NaN when a
dimension matches nothing, -1 when both match but never together, smoothing adds 0.5 to each cell.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticCustomError

from assets.insights.queries import (
    ASSESSMENTS,
    SPANS,
    TAGS,
    TRACES,
    VALID_FEEDBACK,
    InsightsQuery,
    population_filter,
)

OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "=": operator.eq}
SMOOTHING = 0.5  # Jeffreys prior, as MLflow


class DimensionError(ValueError):
    """A dimension's name or parameters are wrong; the message names which."""


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float)):  # bool is an int
        return value
    raise PydanticCustomError("scalar", "must be a string, a number or a boolean")


# Parameters are bound into SQL one by one: scalars only (a list, an object or null is a 400), types kept as sent.
Parameter = Annotated[Any, BeforeValidator(_scalar)]


class Dimension(BaseModel):
    name: str
    parameters: dict[str, Parameter] = {}


@dataclass(frozen=True)
class Counts:
    total: int
    first: int
    second: int
    joint: int


class NpmiResult(BaseModel):
    total_count: int
    dimension1_count: int
    dimension2_count: int
    joint_count: int
    npmi: float
    npmi_smoothed: float


def _param(dimension: Dimension, key: str) -> Any:
    if key not in dimension.parameters:
        raise DimensionError(f"dimension {dimension.name!r} needs parameter {key!r}")
    return dimension.parameters[key]


def threshold(dimension: Dimension) -> float:
    raw = _param(dimension, "threshold")
    try:
        if isinstance(raw, bool):
            raise TypeError
        return float(raw)  # the REST API's parameters may be strings, like the seed's
    except (TypeError, ValueError):
        raise DimensionError(f"dimension {dimension.name!r}: threshold must be a number, not {raw!r}") from None


def _compare(dimension: Dimension, column: sa.ColumnElement) -> sa.ColumnElement[bool]:
    op = dimension.parameters.get("operator", ">")
    if op not in OPERATORS:
        raise DimensionError(f"dimension {dimension.name!r}: operator must be one of {sorted(OPERATORS)}, not {op!r}")
    return OPERATORS[op](column, threshold(dimension))


def _assessment_value(value: Any) -> sa.ColumnElement[bool]:
    """Feedback equal to `value`: a boolean matches true/false in any spelling, a number the numeric value, also
    when asked as a string ("5" matches 5 and 5.0, as MLflow's `feedback.x = '5'` does)."""
    if isinstance(value, bool):
        return ASSESSMENTS.c.bool_value == value
    if isinstance(value, (int, float)):
        return ASSESSMENTS.c.numeric_value == value
    text = str(value)
    matches = [ASSESSMENTS.c.string_value == text]
    if (as_bool := {"true": True, "false": False}.get(text.lower())) is not None:
        matches.append(ASSESSMENTS.c.bool_value == as_bool)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number):
        matches.append(ASSESSMENTS.c.numeric_value == number)
    return sa.or_(*matches)


def trace_ids(dimension: Dimension) -> sa.Select:
    """The trace ids a dimension selects (over all traces; the population is applied by the caller)."""
    name = dimension.name
    if name == "status":
        return sa.select(TRACES.c.trace_id).where(TRACES.c.status == _param(dimension, "value"))
    if name == "latency":
        return sa.select(TRACES.c.trace_id).where(_compare(dimension, TRACES.c.execution_time_ms))
    if name == "span.type":
        return sa.select(SPANS.c.trace_id).where(SPANS.c.span_type == _param(dimension, "value"))
    prefix, _, rest = name.partition(".")
    if not rest:
        raise DimensionError(f"unknown dimension {name!r}")
    if prefix == "tags":
        return sa.select(TAGS.c.trace_id).where(TAGS.c.key == rest, TAGS.c.value == _param(dimension, "value"))
    if prefix == "tools":
        tool = sa.and_(SPANS.c.span_type == "TOOL", SPANS.c.name == rest)
        state = dimension.parameters.get("value", "used")
        used = sa.select(SPANS.c.trace_id).where(tool)
        failed = sa.select(SPANS.c.trace_id).where(tool, SPANS.c.status == "ERROR")
        if state == "used":
            return used
        if state == "error":
            return failed
        if state == "success":
            return used.where(SPANS.c.trace_id.not_in(failed))
        raise DimensionError(f"dimension {name!r}: value must be used, error or success, not {state!r}")
    if prefix == "assessment":
        if "threshold" in dimension.parameters:
            condition = _compare(dimension, ASSESSMENTS.c.numeric_value)
        else:
            condition = _assessment_value(_param(dimension, "value"))
        return sa.select(ASSESSMENTS.c.trace_id).where(VALID_FEEDBACK, ASSESSMENTS.c.name == rest, condition)
    raise DimensionError(f"unknown dimension {name!r}")


def count(conn: sa.Connection, query: InsightsQuery, first: Dimension, second: Dimension) -> Counts:
    in_first, in_second = TRACES.c.trace_id.in_(trace_ids(first)), TRACES.c.trace_id.in_(trace_ids(second))
    row = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(in_first),
            sa.func.count().filter(in_second),
            sa.func.count().filter(sa.and_(in_first, in_second)),
        ).where(*population_filter(query))
    ).one()
    return Counts(*row)


def _npmi(cells: tuple[int, int, int, int], smoothing: float) -> float:
    n11, n10, n01, n00 = (cell + smoothing for cell in cells)
    total, first, second = n11 + n10 + n01 + n00, n11 + n10, n11 + n01
    if first <= 0 or second <= 0 or n11 <= 0:
        return math.nan
    if cells[1] == cells[2] == cells[3] == 0:
        return 1.0  # always together (judged on the observed counts, smoothed or not)
    pmi = math.log(n11 * total / (first * second))
    return max(-1.0, min(1.0, pmi / -math.log(n11 / total)))


def npmi(counts: Counts) -> tuple[float, float]:
    """(npmi, smoothed npmi) from the four counts."""
    if counts.total <= 0 or counts.first == 0 or counts.second == 0:
        return math.nan, math.nan
    cells = (
        counts.joint,
        counts.first - counts.joint,
        counts.second - counts.joint,
        counts.total - counts.first - counts.second + counts.joint,
    )
    if min(cells) < 0:
        return math.nan, math.nan
    raw = -1.0 if counts.joint == 0 else _npmi(cells, 0)
    return raw, _npmi(cells, SMOOTHING)


def calculate_npmi(conn: sa.Connection, query: InsightsQuery, first: Dimension, second: Dimension) -> NpmiResult:
    counts = count(conn, query, first, second)
    raw, smoothed = npmi(counts)
    return NpmiResult(
        total_count=counts.total, dimension1_count=counts.first, dimension2_count=counts.second,
        joint_count=counts.joint, npmi=raw, npmi_smoothed=smoothed,
    )


def mlflow_literal(value: Any) -> str | None:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if "'" not in text:
        return f"'{text}'"
    return f'"{text}"' if '"' not in text else None


def mlflow_filter_string(dimension: Dimension) -> str | None:
    """The MLflow `search_traces` filter for the same traces, where MLflow's syntax has one (to open them in
    the MLflow UI). None for a tool's error/success states and for values holding both kinds of quote.
    `tools.<name>` becomes `span.name = '<name>'`: the same traces while only tool spans carry that name."""
    prefix, _, rest = dimension.name.partition(".")
    if "threshold" in dimension.parameters:
        column = {"latency": "trace.execution_time_ms"}.get(dimension.name)
        if prefix == "assessment":
            column = f"feedback.`{rest}`"
        op = dimension.parameters.get("operator", ">")
        return f"{column} {op} {threshold(dimension)!r}" if column and op in OPERATORS else None
    value = mlflow_literal(dimension.parameters.get("value", "used" if prefix == "tools" else ""))
    if value is None:
        return None
    if dimension.name == "status":
        return f"attributes.status = {value}"
    if dimension.name == "span.type":
        return f"span.type = {value}"
    if prefix == "tags":
        return f"tags.`{rest}` = {value}"
    if prefix == "assessment":
        return f"feedback.`{rest}` = {value}"
    if prefix == "tools" and value == "'used'" and mlflow_literal(rest):
        return f"span.name = {mlflow_literal(rest)}"
    return None
