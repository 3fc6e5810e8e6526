"""The dimension registry: every kind of trace dimension in one table, `KINDS` (like MLflow's TRACES_METRICS_CONFIGS).

A dimension selects traces: "status is ERROR", "tool web.fetch failed", "user_thumbs is false". Each kind says, in
one place, its parameters, the trace ids it selects in the warehouse, the MLflow `search_traces` filter for the same
traces (for "open in MLflow"; None where MLflow's syntax cannot say it, and `mlflow_limits` says when), how it reads
in words, which of its values exist in a population (discovery), and its candidate values for correlations and root
causes. Discovery, NPMI, correlations, root causes and the filters all read `KINDS`: a new kind is one entry.

A kind is named as is (`status`, `span.type`) or is a family `<kind>.<key>` (`tags.<key>`, keys may hold dots and
spaces). Every value is a bound parameter. Counts leave out evaluation traces unless the query includes them.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from assets.insights.breakdowns import TEXT_VALUE, TOOL_SPAN, USER_TAG, assessments_discovery
from assets.insights.queries import (
    ASSESSMENTS,
    DIMENSION_VALUES,
    METADATA,
    SPANS,
    TAGS,
    TRACES,
    VALID_FEEDBACK,
    InsightsQuery,
    population_filter,
)

SESSION_SCOPED = '"mlflow.trace.session":'  # in an assessment's metadata: it is about the whole session (MLflow's test)
OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "=": operator.eq}
ENUM_LIMIT = 50  # a dimension with at most this many values lists them as enum_values
TOOL_STATES = ["used", "error", "success"]


# --- dimensions and their parameters ---------------------------------------------------------------------------------


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


def _operator(dimension: Dimension) -> str:
    op = dimension.parameters.get("operator", ">")
    if op not in OPERATORS:
        raise DimensionError(f"dimension {dimension.name!r}: operator must be one of {sorted(OPERATORS)}, not {op!r}")
    return op


def _compare(dimension: Dimension, column: sa.ColumnElement) -> sa.ColumnElement[bool]:
    return OPERATORS[_operator(dimension)](column, threshold(dimension))


def _threshold_words(dimension: Dimension) -> str:
    return f"{_operator(dimension)} {threshold(dimension):g}"


def value_text(value: Any) -> str:
    """A parameter value as the warehouse's text columns hold it (booleans in MLflow's lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def mlflow_literal(value: Any) -> str | None:
    """`value` as a string literal of MLflow's filter syntax; None when it holds both kinds of quote."""
    text = value_text(value)
    if "'" not in text:
        return f"'{text}'"
    return f'"{text}"' if '"' not in text else None


def _key(key: str) -> str | None:
    """A tag, metadata or feedback key for MLflow's filter syntax (backquoted: keys hold dots and spaces)."""
    return None if "`" in key else f"`{key}`"


# --- populations: production traces unless asked ---------------------------------------------------------------------


class Population(InsightsQuery):
    include_evaluations: bool = Field(
        default=False, description="Also count the traces of evaluation runs (mlflow.genai.evaluate); by default "
        "only production traces count.")


# MLflow marks a trace made inside a run with that run (metadata `mlflow.sourceRun`, the extract's
# `traces.evaluation`): every trace of mlflow.genai.evaluate has it, and MLflow's own online scoring leaves such
# traces out the same way.
EVALUATION_TRACES = sa.select(TRACES.c.trace_key).where(TRACES.c.evaluation)


def production(table: sa.FromClause = TRACES) -> sa.ColumnElement[bool]:
    """The rows of `table` whose trace is a production trace (not an evaluation's); the traces table or an
    alias of it says so itself."""
    if "evaluation" in table.c:
        return sa.not_(table.c.evaluation)
    return table.c.trace_key.not_in(EVALUATION_TRACES)


def population(query: InsightsQuery, table: sa.FromClause = TRACES) -> list[sa.ColumnElement[bool]]:
    """The rows of `table` whose trace is counted: in the query's experiments and times, and a production trace
    unless the query includes evaluations."""
    conditions = population_filter(query, table)
    if not (isinstance(query, Population) and query.include_evaluations):
        conditions.append(production(table))
    return conditions


# --- discovery and candidates ----------------------------------------------------------------------------------------


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
    mlflow_limits: str | None = Field(default=None, description="What MLflow's search filter cannot express of this "
                                      "dimension (null: everything can be opened in MLflow).")


# The extra conditions on a kind's table (population, or the traces to read) for `Kind.stored_rows`.
Restriction = Callable[[sa.TableClause], list[sa.ColumnElement[bool]]]


@dataclass(frozen=True)
class Facts:
    """Candidate dimension values: `rows` (trace_key, name, value), one per counted trace of the population
    having the value, and how a row's name and value become its dimension's parameters. `prefix` is put before
    each name once the rows are counted (made on every row, the longer strings cost a sixth of a correlations
    request)."""

    rows: sa.Select
    parameters: Callable[[str, str], dict[str, Any]]
    prefix: str = ""


@dataclass(frozen=True)
class TraceCondition:
    """One candidate dimension value that a condition on the trace's own row (`traces`) decides: counted in the
    same scan of the traces that finds the targets, with no rows to join."""

    name: str
    value: str
    condition: sa.ColumnElement[bool]
    parameters: dict[str, Any]


Candidates = Facts | TraceCondition
Present = dict[str, list[str]]  # a stored dimension's name → its values some trace of a population has, sorted


def _value_parameters(values: list[str] | None, description: str) -> list[DimensionParameter]:
    kind = "enum" if values is not None else "string"
    return [DimensionParameter(name="value", type=kind, enum_values=values, description=description)]


def _threshold_parameters(what: str, required: bool = True) -> list[DimensionParameter]:
    return [
        DimensionParameter(name="threshold", type="number", required=required, description=what),
        DimensionParameter(name="operator", type="enum", required=False, enum_values=list(OPERATORS),
                           description="Comparison with the threshold; default '>'."),
    ]


def _distinct(conn: sa.Connection, query: InsightsQuery, table: sa.TableClause, column: sa.ColumnElement,
              *where: sa.ColumnElement[bool]) -> list[str]:
    select = sa.select(column).distinct().where(*population_filter(query, table), *where, column.is_not(None))
    return sorted(conn.execute(select).scalars())


def _value_lists(conn: sa.Connection, query: InsightsQuery, table: sa.TableClause, column: sa.ColumnElement,
                 key: sa.ColumnElement | None, *where: sa.ColumnElement[bool]) -> dict[str | None, list[str] | None]:
    """Each key that has a value (None for a kind without keys) → its values sorted, or None past ENUM_LIMIT: one
    scan for every key, reading at most ENUM_LIMIT + 1 values of each (a key may have a value per trace)."""
    pairs = (sa.select((sa.null() if key is None else key).label("key"), column.label("value")).distinct()
             .where(*population_filter(query, table), *where, column.is_not(None),
                    *([] if key is None else [key.is_not(None)]))
             .subquery("pairs"))
    ranked = sa.select(pairs.c.key, pairs.c.value, sa.func.row_number().over(
        partition_by=pairs.c.key, order_by=pairs.c.value).label("rank")).subquery("ranked")
    found: dict[str | None, list[str]] = {}
    for found_key, value in conn.execute(sa.select(ranked.c.key, ranked.c.value).where(ranked.c.rank <= ENUM_LIMIT + 1)):
        found.setdefault(found_key, []).append(value)
    return {k: sorted(values) if len(values) <= ENUM_LIMIT else None
            for k, values in sorted(found.items(), key=lambda item: item[0] or "")}


def _quantile(conn: sa.Connection, query: InsightsQuery, fraction: float, column: sa.ColumnElement,
              *where: sa.ColumnElement[bool]) -> float | None:
    found = conn.execute(sa.select(sa.func.percentile_cont(fraction).within_group(column))
                         .where(*population(query, column.table), *where)).scalar()
    return None if found is None else float(found)


# --- the kinds -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Kind:
    """One kind of dimension. `display` and `description` name a family's key as {key}."""

    name: str
    display: str
    description: str
    family: bool = False
    mlflow_limits: str | None = None  # what MLflow's search filter cannot express, if anything

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.Select | sa.CompoundSelect:
        """The keys (traces.trace_key) of the traces the dimension selects (over all traces; the caller applies the
        population)."""
        raise NotImplementedError

    def selects(self, dimension: Dimension, key: str | None) -> sa.ColumnElement[bool]:
        """The same traces as a condition on their `traces` row."""
        return TRACES.c.trace_key.in_(self.trace_keys(dimension, key))

    def mlflow_filter(self, dimension: Dimension, key: str | None) -> str | None:
        """MLflow's search_traces filter for the same traces, None where its syntax cannot say it."""
        return None

    def words(self, dimension: Dimension, key: str | None) -> str:
        """The parameters in words: 'false', '> 1500'."""
        return value_text(_param(dimension, "value"))

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        """The dimension in plain words: 'tool web.fetch failed'."""
        raise NotImplementedError

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        """The dimensions of this kind the population's data has; `present`: the stored kinds' values the
        population has, from the dimension facts (None: read the tables)."""
        raise NotImplementedError

    def stored_rows(self, where: Restriction = lambda table: [], offered_only: bool = False,
                    distinct: bool = True) -> sa.Select | None:
        """(trace_key, name, value) of every value of this kind each trace has whatever population it is counted
        in, of the rows `where` gives for the kind's table (`offered_only`: the values offered as candidates only;
        not `distinct`: a trace's value may repeat). The dimension facts keep them (assets/insights/facts.py). None
        for a kind whose values depend on the population (quantile thresholds, sessions, feedback)."""
        return None

    def offered(self) -> sa.ColumnElement[bool] | None:
        """Which of the stored values (DIMENSION_VALUES.c.value) are offered as candidates, decided over every
        trace; None: all of them."""
        return None

    def candidates(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension]) -> list[Candidates]:
        """The population's candidate values of a kind that stores none (see `stored_rows`)."""
        return []

    def info(self, key: str | None, parameters: list[DimensionParameter]) -> DimensionInfo:
        return DimensionInfo(
            name=f"{self.name}.{key}" if self.family else self.name, display_name=self.display.format(key=key),
            description=self.description.format(key=key), parameters=parameters, mlflow_limits=self.mlflow_limits,
        )


@dataclass(frozen=True, kw_only=True)
class ValueKind(Kind):
    """Traces with a row whose `column` equals the `value` parameter (a family's: in the rows of its key)."""

    column: sa.ColumnElement
    key_column: sa.ColumnElement | None = None
    where: tuple[sa.ColumnElement[bool], ...] = ()  # the rows that count, e.g. failed spans
    listed: tuple[sa.ColumnElement[bool], ...] = ()  # which rows discovery and candidates list (not the selector)
    # Which values they list, decided over every trace's rows: stored facts hold all values, this picks per request.
    listed_values: sa.Select | None = None
    phrasing: str  # "tag {key} is {value}"
    mlflow: Callable[[str | None, str], str | None] | None = None  # (key, value) -> filter

    def _matching(self, key: str | None) -> list[sa.ColumnElement[bool]]:
        return [*self.where, *([self.key_column == key] if self.family else [])]

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.Select:
        return sa.select(self.column.table.c.trace_key).where(self._equal(dimension, key))

    def _equal(self, dimension: Dimension, key: str | None) -> sa.ColumnElement[bool]:
        return sa.and_(*self._matching(key), self.column == value_text(_param(dimension, "value")))

    def selects(self, dimension: Dimension, key: str | None) -> sa.ColumnElement[bool]:
        # A value of the trace's own row (status, name, user) is compared there: no semi join.
        return self._equal(dimension, key) if self.column.table is TRACES else super().selects(dimension, key)

    def mlflow_filter(self, dimension: Dimension, key: str | None) -> str | None:
        return self.mlflow(key, value_text(_param(dimension, "value"))) if self.mlflow else None

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        return self.phrasing.format(key=key, value=self.words(dimension, key))

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        if present is None:
            values = () if self.listed_values is None else (self.column.in_(self.listed_values),)
            listed = _value_lists(conn, query, self.column.table, self.column, self.key_column if self.family else None,
                                  *self.where, *self.listed, *values)
        else:
            found = {name.removeprefix(f"{self.name}.") if self.family else None: values
                     for name, values in present.items()
                     if (name.startswith(f"{self.name}.") if self.family else name == self.name)}
            listed = {key: found[key] if len(found[key]) <= ENUM_LIMIT else None
                      for key in sorted(found, key=lambda key: key or "")}
        return [self.info(key, _value_parameters(values, self.display.format(key=key))) for key, values in listed.items()]

    def stored_rows(self, where: Restriction = lambda table: [], offered_only: bool = False,
                    distinct: bool = True) -> sa.Select:
        table = self.column.table
        name = sa.literal(f"{self.name}.") + self.key_column if self.family else sa.literal(self.name)
        offered = [self.column.in_(self.listed_values)] if offered_only and self.listed_values is not None else []
        rows = (sa.select(table.c.trace_key.label("trace_key"), name.label("name"), self.column.label("value"))
                .where(*self.where, *self.listed, self.column.is_not(None), *offered, *where(table)))
        # A trace has one row in `traces`; in a child table many rows of a trace may hold the same value.
        return rows.distinct() if distinct and table is not TRACES else rows

    def offered(self) -> sa.ColumnElement[bool] | None:
        return None if self.listed_values is None else DIMENSION_VALUES.c.value.in_(self.listed_values)


def _equals(left: str) -> Callable[[str | None, str], str | None]:
    """MLflow's `<left> = '<value>'`, `left` naming the family's key as {key}."""
    def render(key: str | None, value: str) -> str | None:
        quoted_key = _key(key) if key is not None else ""
        literal = mlflow_literal(value)
        return f"{left.format(key=quoted_key)} = {literal}" if literal and quoted_key is not None else None
    return render


def _model_filter(_key: str | None, model: str) -> str | None:
    # MLflow keeps the model in the span's JSON attributes, not in a column its search reads; its
    # `span.attributes.<name> RLIKE '^...$'` matches the whole JSON-encoded attribute value, case-sensitively.
    literal = mlflow_literal(f"^{re.escape(model)}$")
    return f"span.attributes.`mlflow.llm.model` RLIKE {literal}" if literal else None


def _exception_filter(_key: str | None, exception_type: str) -> str | None:
    # The type is an attribute of the span's `exception` event, which MLflow's search reaches only as text of the
    # span's JSON (`span.attributes.<name> LIKE`); LIKE's wildcards (`_`, `%`) would make it looser than the
    # warehouse's equality, so only types of letters, digits and dots get a filter.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9.]*", exception_type):
        return None
    return f"span.status = 'ERROR' AND span.attributes.`exception.type` LIKE ': \"{exception_type}\"%'"


@dataclass(frozen=True, kw_only=True)
class ThresholdKind(Kind):
    """Traces whose `column` compares so with the `threshold` parameter; candidates: above the population's quantile."""

    column: sa.ColumnElement
    unit: str
    mlflow_column: str
    quantile: float

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.Select:
        return sa.select(self.column.table.c.trace_key).where(_compare(dimension, self.column))

    def selects(self, dimension: Dimension, key: str | None) -> sa.ColumnElement[bool]:
        return _compare(dimension, self.column) if self.column.table is TRACES else super().selects(dimension, key)

    def mlflow_filter(self, dimension: Dimension, key: str | None) -> str | None:
        return f"{self.mlflow_column} {_operator(dimension)} {threshold(dimension)!r}"

    def words(self, dimension: Dimension, key: str | None) -> str:
        return _threshold_words(dimension)

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        return f"{self.name} {_threshold_words(dimension)} {self.unit}"

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        return [self.info(None, _threshold_parameters(f"{self.display} in {self.unit}"))]

    def candidates(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension]) -> list[Candidates]:
        limit = _quantile(conn, query, self.quantile, self.column)
        if limit is None:
            return []
        return [TraceCondition(self.name, f"> {limit:g}", self.column > limit, {"threshold": limit, "operator": ">"})]


@dataclass(frozen=True, kw_only=True)
class ToolKind(Kind):
    """`tools.<name>`: traces that called the tool (used), had a call fail (error), or had none fail (success)."""

    def _state(self, dimension: Dimension) -> str:
        state = dimension.parameters.get("value", "used")
        if state not in TOOL_STATES:
            raise DimensionError(f"dimension {dimension.name!r}: value must be used, error or success, not {state!r}")
        return state

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.Select:
        state, tool = self._state(dimension), sa.and_(TOOL_SPAN, SPANS.c.name == key)
        used = sa.select(SPANS.c.trace_key).where(tool)
        failed = sa.select(SPANS.c.trace_key).where(tool, SPANS.c.status == "ERROR")
        return {"used": used, "error": failed, "success": used.where(SPANS.c.trace_key.not_in(failed))}[state]

    def mlflow_filter(self, dimension: Dimension, key: str | None) -> str | None:
        # MLflow's span conditions hold for one span together: a TOOL span of this name (that failed).
        state, name = self._state(dimension), mlflow_literal(key)
        if state == "success" or name is None:
            return None
        return f"span.type = 'TOOL' AND span.name = {name}" + (" AND span.status = 'ERROR'" if state == "error" else "")

    def words(self, dimension: Dimension, key: str | None) -> str:
        return self._state(dimension)

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        return {"used": f"called tool {key}", "error": f"tool {key} failed",
                "success": f"tool {key} never failed"}[self._state(dimension)]

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        tools = (_distinct(conn, query, SPANS, SPANS.c.name, TOOL_SPAN) if present is None else
                 sorted(name.removeprefix("tools.") for name, values in present.items()
                        if name.startswith("tools.") and "used" in values))
        return [self.info(tool, _value_parameters(TOOL_STATES, "used, error or success")) for tool in tools]

    def stored_rows(self, where: Restriction = lambda table: [], offered_only: bool = False,
                    distinct: bool = True) -> sa.Select:
        # One grouped scan of the tool spans gives each (trace, tool) both its rows: used, and error or success.
        calls = (sa.select(SPANS.c.trace_key, (sa.literal("tools.") + SPANS.c.name).label("name"),
                           (sa.func.count().filter(SPANS.c.status == "ERROR") > 0).label("failed"))
                 .where(TOOL_SPAN, SPANS.c.name.is_not(None), *where(SPANS)).group_by(SPANS.c.trace_key, SPANS.c.name)
                 .subquery("tool_calls"))
        state = sa.case((calls.c.failed, sa.literal("error")), else_=sa.literal("success"))
        return sa.select(calls.c.trace_key, calls.c.name,
                         sa.func.unnest(sa.func.list_value(sa.literal("used"), state)).label("value"))


def _feedback_value(value: Any) -> sa.ColumnElement[bool]:
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


@dataclass(frozen=True, kw_only=True)
class AssessmentKind(Kind):
    """`assessment.<name>`: traces with valid feedback of this name equal to `value`, or comparing so with
    `threshold` (numeric feedback). Candidates: every boolean and string value, numeric ones below their p25."""

    numeric_quantile: float

    @staticmethod
    def about(columns: list[sa.ColumnElement], *where: sa.ColumnElement[bool],
              distinct: bool = True, counted: InsightsQuery | None = None) -> sa.CompoundSelect:
        """(trace_key, *columns) of the valid feedback matching `where`, for each trace it is about: the trace it
        is logged on and, for feedback on a whole conversation (its metadata names the session, MLflow's
        session-scoped assessments), every trace of that session in its experiment, as MLflow's search counts it.
        Not `distinct`: a row may repeat (enough for `IN`, and no hash of every row). With `counted`, only for
        the traces that query counts (`population`, on each branch's own rows)."""
        logged_on, about = TRACES.alias("logged_on"), TRACES.alias("about")
        session = sa.and_(about.c.experiment_id == logged_on.c.experiment_id,
                          about.c.session_id == logged_on.c.session_id)

        def counted_on(table: sa.FromClause) -> list[sa.ColumnElement[bool]]:
            return [] if counted is None else population(counted, table)

        return (sa.union if distinct else sa.union_all)(
            sa.select(ASSESSMENTS.c.trace_key.label("trace_key"), *columns)
            .where(VALID_FEEDBACK, *where, *counted_on(ASSESSMENTS)),
            sa.select(about.c.trace_key, *columns)
            .select_from(ASSESSMENTS.join(logged_on, logged_on.c.trace_key == ASSESSMENTS.c.trace_key).join(about, session))
            .where(VALID_FEEDBACK, *where, ASSESSMENTS.c.metadata_json.contains(SESSION_SCOPED),
                   *counted_on(about)),
        )

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.CompoundSelect:
        if "threshold" in dimension.parameters:
            condition = _compare(dimension, ASSESSMENTS.c.numeric_value)
        else:
            condition = _feedback_value(_param(dimension, "value"))
        return self.about([], ASSESSMENTS.c.name == key, condition, distinct=False)

    def mlflow_filter(self, dimension: Dimension, key: str | None) -> str | None:
        if (name := _key(key)) is None:
            return None
        if "threshold" in dimension.parameters:
            return f"feedback.{name} {_operator(dimension)} {threshold(dimension)!r}"
        literal = mlflow_literal(_param(dimension, "value"))
        return f"feedback.{name} = {literal}" if literal else None

    def words(self, dimension: Dimension, key: str | None) -> str:
        return _threshold_words(dimension) if "threshold" in dimension.parameters else super().words(dimension, key)

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        if "threshold" in dimension.parameters:
            return f"{key} {_threshold_words(dimension)}"
        return f"{key} is {self.words(dimension, key)}"

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        found = []
        for feedback in assessments_discovery(conn, query).data:
            if feedback.assessment_type == "numeric":
                parameters = _threshold_parameters("Feedback value")
            elif feedback.assessment_type == "boolean":
                parameters = [DimensionParameter(name="value", type="boolean", enum_values=["true", "false"])]
            else:
                values = _distinct(conn, query, ASSESSMENTS, TEXT_VALUE, VALID_FEEDBACK, ASSESSMENTS.c.name == feedback.name)
                parameters = _value_parameters(values if len(values) <= ENUM_LIMIT else None, "Feedback value")
            found.append(self.info(feedback.name, parameters))
        return found

    def candidates(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension]) -> list[Facts]:
        types = {info.name: info.assessment_type for info in assessments_discovery(conn, query).data}
        found = []
        if categorical := [feedback for feedback, kind in types.items() if kind != "numeric"]:
            text = sa.case((ASSESSMENTS.c.value_type == "boolean", sa.cast(ASSESSMENTS.c.bool_value, sa.String)),
                           else_=TEXT_VALUE)
            rows = self.about([ASSESSMENTS.c.name.label("name"), text.label("value")],
                              ASSESSMENTS.c.name.in_(categorical),
                              ASSESSMENTS.c.value_type.in_(["boolean", "string"]), counted=query)

            def parameters(name: str, value: str) -> dict[str, Any]:
                boolean = types[name.removeprefix("assessment.")] == "boolean"
                return {"value": value == "true" if boolean else value}

            found.append(Facts(rows, parameters, prefix="assessment."))
        for feedback in (feedback for feedback, kind in types.items() if kind == "numeric"):
            low = _quantile(conn, query, self.numeric_quantile, ASSESSMENTS.c.numeric_value, VALID_FEEDBACK,
                            ASSESSMENTS.c.name == feedback)
            if low is not None:
                rows = self.about([sa.literal(f"assessment.{feedback}").label("name"),
                                   sa.literal(f"< {low:g}").label("value")],
                                  ASSESSMENTS.c.name == feedback, ASSESSMENTS.c.numeric_value < low,
                                  counted=query)
                found.append(Facts(rows, lambda _name, _value, low=low: {"threshold": low, "operator": "<"}))
        return found


@dataclass(frozen=True, kw_only=True)
class SessionKind(Kind):
    """`session`: traces of a session in which some trace has the dimension named by `outcome`, with that
    dimension's own parameters beside it: {"outcome": "assessment.user_thumbs", "value": false} selects every
    trace of the sessions with a thumbs-down. Candidates: one per outcome (status ERROR, thumbs-down, ...)."""

    def inner(self, dimension: Dimension) -> Dimension:
        parameters = dict(dimension.parameters)
        name = parameters.pop("outcome", None)
        if not isinstance(name, str) or kind_of(name)[0] is self:
            raise DimensionError(f"dimension {dimension.name!r} needs parameter 'outcome': the name of another "
                                 "dimension, e.g. 'assessment.user_thumbs' (with its value), or 'status'")
        return Dimension(name=name, parameters=parameters)

    def trace_keys(self, dimension: Dimension, key: str | None) -> sa.Select:
        sessions = sa.select(TRACES.c.session_id).where(selects(self.inner(dimension)), TRACES.c.session_id.is_not(None))
        return sa.select(TRACES.c.trace_key).where(TRACES.c.session_id.in_(sessions))

    def words(self, dimension: Dimension, key: str | None) -> str:
        return phrase(self.inner(dimension))

    def phrase(self, dimension: Dimension, key: str | None) -> str:
        return f"in a session where {phrase(self.inner(dimension))}"

    def discover(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
                 present: Present | None = None) -> list[DimensionInfo]:
        if conn.execute(sa.select(TRACES.c.session_id).where(*population_filter(query), TRACES.c.session_id.is_not(None))
                        .limit(1)).first() is None:
            return []
        names = sorted({outcome.name for outcome in outcomes})
        return [self.info(None, [
            DimensionParameter(name="outcome", type="enum", enum_values=names,
                               description="The dimension some trace of the session has (an outcome's name)."),
            DimensionParameter(name="value", type="string", required=False, description="Its value, if it takes one."),
            *_threshold_parameters("Its threshold, if it takes one.", required=False),
        ])]

    def candidates(self, conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension]) -> list[Candidates]:
        found = []
        for outcome in outcomes:
            dimension = Dimension(name=self.name, parameters={"outcome": outcome.name, **outcome.parameters})
            found.append(TraceCondition(self.name, self.words(dimension, None),
                                        self.selects(dimension, None),
                                        dict(dimension.parameters)))
        return found


# Metadata keys MLflow writes that say where a trace came from; the rest of `mlflow.*` (previews, sizes, the
# run of an evaluation) are no dimensions, and the user and session have their own kinds.
MLFLOW_METADATA_DIMENSIONS = ("mlflow.modelId", "mlflow.source.name", "mlflow.source.git.commit")
# Span names that are not already a tool's (tools.<name>) or the trace's own (trace_name: the root span's name).
NAMED_SPANS = sa.select(SPANS.c.name).where(SPANS.c.parent_span_id.is_not(None),
                                            SPANS.c.span_type.is_distinct_from("TOOL"))

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    ValueKind(name="status", display="Trace status", description="Traces with this status.", column=TRACES.c.status,
              phrasing="status is {value}", mlflow=_equals("attributes.status")),
    ValueKind(name="trace_name", display="Trace name", description="Traces of this name (their root span's).",
              column=TRACES.c.trace_name, phrasing="trace name is {value}", mlflow=_equals("trace.name")),
    ValueKind(name="user", display="User", description="Traces of this user (metadata mlflow.trace.user).",
              column=TRACES.c.user_id, phrasing="user is {value}", mlflow=_equals("metadata.`mlflow.trace.user`")),
    SessionKind(name="session", display="Session with an outcome",
                description="Traces of the sessions in which some trace has this outcome.",
                mlflow_limits="MLflow's search cannot select traces by what other traces of their session have."),
    ThresholdKind(name="latency", display="Latency", description="Traces whose latency (ms) compares so.",
                  column=TRACES.c.execution_time_ms, unit="ms", mlflow_column="trace.execution_time_ms", quantile=0.9),
    ValueKind(name="span.type", display="Span type", description="Traces with a span of this type.",
              column=SPANS.c.span_type, phrasing="has a {value} span", mlflow=_equals("span.type")),
    ValueKind(name="span.name", display="Span name", description="Traces with a span of this name.",
              column=SPANS.c.name, listed_values=NAMED_SPANS, phrasing="has a span named {value}",
              mlflow=_equals("span.name")),
    ValueKind(name="model", display="Model", description="Traces with a span calling this model.",
              column=SPANS.c.model_name, phrasing="called model {value}", mlflow=_model_filter),
    ValueKind(name="error.type", display="Error type", description="Traces with a span that failed with this "
              "exception type.", column=SPANS.c.exception_type, where=(SPANS.c.status == "ERROR",),
              phrasing="a span failed with {value}", mlflow=_exception_filter,
              mlflow_limits="Only for types of letters, digits and dots (MLflow matches them with LIKE)."),
    ToolKind(name="tools", family=True, display="Tool {key}",
             description="Traces that called tool {key!r} (used), had a call fail (error) or none fail (success).",
             mlflow_limits="Not for success: MLflow's search cannot say that no call failed."),
    ValueKind(name="tags", family=True, display="Tag {key}", description="Traces whose tag {key!r} has this value.",
              column=TAGS.c.value, key_column=TAGS.c.key, listed=(USER_TAG,), phrasing="tag {key} is {value}",
              mlflow=_equals("tags.{key}")),
    ValueKind(name="metadata", family=True, display="Metadata {key}",
              description="Traces whose metadata {key!r} has this value.", column=METADATA.c.value,
              key_column=METADATA.c.key,
              listed=(sa.or_(sa.not_(METADATA.c.key.startswith("mlflow.")),
                             METADATA.c.key.in_(MLFLOW_METADATA_DIMENSIONS)),),
              phrasing="metadata {key} is {value}", mlflow=_equals("metadata.{key}")),
    AssessmentKind(name="assessment", family=True, display="Feedback {key}", description="Traces with feedback {key!r}.",
                   numeric_quantile=0.25),
)}


def kind_of(name: str) -> tuple[Kind, str | None]:
    """The kind of a dimension name and, for a family, its key."""
    if (kind := KINDS.get(name)) is not None and not kind.family:
        return kind, None
    prefix, _, key = name.partition(".")
    if (kind := KINDS.get(prefix)) is None or not kind.family or not key:
        raise DimensionError(f"unknown dimension {name!r}")
    return kind, key


def trace_keys(dimension: Dimension) -> sa.Select | sa.CompoundSelect:
    """The keys (traces.trace_key) of the traces a dimension selects (over all traces; the population is applied
    by the caller)."""
    kind, key = kind_of(dimension.name)
    return kind.trace_keys(dimension, key)


def counted_keys(dimension: Dimension, query: InsightsQuery) -> sa.Select | sa.CompoundSelect:
    """The keys of the traces the query counts (`population`) that a dimension selects, a key possibly more than
    once. Each part of the selector is filtered on the rows it reads (spans, tags, metadata and assessments carry
    their trace's experiment and time): no join of the selected keys to every trace."""
    kind, key = kind_of(dimension.name)
    keys = kind.trace_keys(dimension, key)
    parts = [part.where(*population(query, _key_source(part)))
             for part in (keys.selects if isinstance(keys, sa.CompoundSelect) else [keys])]
    return parts[0] if len(parts) == 1 else sa.union_all(*parts)


def _key_source(keys: sa.Select) -> sa.FromClause:
    """The table (or alias) whose `trace_key` a select of trace keys reads."""
    column = keys.selected_columns[0]
    return getattr(column, "element", column).table


def selects(dimension: Dimension) -> sa.ColumnElement[bool]:
    """The traces a dimension selects, as a condition on `traces` rows: a comparison for the trace's own values,
    `trace_key IN (…)` for the others."""
    kind, key = kind_of(dimension.name)
    return kind.selects(dimension, key)


def mlflow_filter_string(dimension: Dimension) -> str | None:
    """The MLflow `search_traces` filter for the same traces (to open them in the MLflow UI), None where MLflow's
    syntax cannot say it (see each kind's mlflow_limits) or a value holds both kinds of quote."""
    kind, key = kind_of(dimension.name)
    return kind.mlflow_filter(dimension, key)


def words(dimension: Dimension) -> str:
    """The parameters in words: 'false', '> 1500', 'error'."""
    kind, key = kind_of(dimension.name)
    return kind.words(dimension, key)


def phrase(dimension: Dimension) -> str:
    """The dimension in plain words: 'tool web.fetch failed', 'user_thumbs is false'."""
    kind, key = kind_of(dimension.name)
    return kind.phrase(dimension, key)


def subject(dimension: Dimension) -> str:
    """What a dimension is about: its name, or for `session`, the name of its outcome."""
    kind, _ = kind_of(dimension.name)
    return kind.inner(dimension).name if isinstance(kind, SessionKind) else dimension.name


def discover(conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension],
             present: Present | None = None) -> list[DimensionInfo]:
    """Every dimension the population's data has, kind by kind in the registry's order (`present`: the stored
    kinds' values, from the dimension facts)."""
    return [info for kind in KINDS.values() for info in kind.discover(conn, query, outcomes, present)]


def candidates(conn: sa.Connection, query: InsightsQuery, outcomes: list[Dimension]) -> list[Candidates]:
    """The candidate values of the kinds that store none, over the population (`outcomes` give the session
    candidates); the stored kinds' are the dimension facts' (assets/insights/facts.py) or `stored_candidates`."""
    return [facts for kind in KINDS.values() for facts in kind.candidates(conn, query, outcomes)]


STORED_KINDS = [kind for kind in KINDS.values() if kind.stored_rows() is not None]


def stored_rows(where: Restriction = lambda table: [], offered_only: bool = False) -> sa.CompoundSelect:
    """(trace_key, name, value), distinct, of every stored kind, of the rows `where` gives for each kind's table."""
    return sa.union_all(*(kind.stored_rows(where, offered_only) for kind in STORED_KINDS))


def stored_parameters(_name: str, value: str) -> dict[str, Any]:
    """A stored value's dimension parameters (every stored kind takes its value as `value`)."""
    return {"value": value}


def stored_candidates(query: InsightsQuery) -> Facts:
    """The stored kinds' candidate values over the population, read from spans, tags and metadata: what the
    dimension facts hold, for a warehouse whose facts are not up to date."""
    return Facts(stored_rows(lambda table: population(query, table), offered_only=True), stored_parameters)


def offered() -> sa.ColumnElement[bool]:
    """Which stored values (DIMENSION_VALUES rows) are offered as candidates, decided over every trace."""
    return sa.and_(sa.true(), *(sa.or_(DIMENSION_VALUES.c.name != kind.name, condition) for kind in STORED_KINDS
                                if (condition := kind.offered()) is not None))
