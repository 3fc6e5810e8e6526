"""MLflow's search_traces filter strings as predicates over the warehouse, and MLflow's trace filter
correlation (NPMI between two filters) counted from the warehouse.

A filter string is parsed by MLflow's own parser (`SearchTraceUtils`, as `SqlAlchemyStore` does), so a syntax
error is MLflow's error with MLflow's message. Each parsed clause has a kind (`_kind`, the order of checks in
`SqlAlchemyStore._get_filter_clauses_for_search_traces`, whose `is_*` checks also reject the comparators a kind
does not allow) and `KINDS` says how each kind becomes a predicate on the warehouse `traces` table. The meaning
is MLflow's on a SQLite tracking store: LIKE is case-sensitive (MLflow sets `case_sensitive_like`), ILIKE folds
ASCII letters only (SQLite's lower()), RLIKE is a regex search. Values are always bound parameters.

What the warehouse cannot answer exactly raises INVALID_PARAMETER_VALUE naming the filter and why, instead of a
different answer than MLflow's.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from typing import Any

import duckdb
import sqlalchemy as sa
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.analytics.trace_correlation import calculate_npmi_from_counts
from mlflow.store.tracking.utils.trace_analytics import (
    TRACE_ANALYTICS_COLUMNS_BY_METADATA_KEY,
    get_trace_analytics_metadata_filter,
)
from mlflow.tracing.analysis import TraceFilterCorrelationResult
from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey
from mlflow.utils.search_utils import SearchTraceUtils
from mlflow.utils.validation import _parse_experiment_ids

TRACES = sa.table(
    "traces", sa.column("trace_id"), sa.column("experiment_id"), sa.column("timestamp_ms"),
    sa.column("execution_time_ms"), sa.column("status"), sa.column("client_request_id"), sa.column("trace_name"),
    sa.column("session_id"), sa.column("input_tokens"), sa.column("output_tokens"), sa.column("total_tokens"),
    sa.column("cache_read_input_tokens"), sa.column("cache_creation_input_tokens"), sa.column("input_cost"),
    sa.column("output_cost"), sa.column("total_cost"),
)
SPANS = sa.table(
    "spans", sa.column("trace_id"), sa.column("experiment_id"), sa.column("start_time_ns"), sa.column("name"),
    sa.column("span_type"), sa.column("status"),
)
TAGS = sa.table("trace_tags", sa.column("trace_id"), sa.column("key"), sa.column("value"))
METADATA = sa.table("trace_metadata", sa.column("trace_id"), sa.column("key"), sa.column("value"))
LINKS = sa.table("trace_links", sa.column("trace_id"), sa.column("kind"), sa.column("target_id"))
ASSESSMENTS = sa.table(
    "assessments", sa.column("trace_id"), sa.column("name"), sa.column("assessment_type"), sa.column("valid"),
    sa.column("value_json"), sa.column("metadata_json"), sa.column("aggregate_value"),
    sa.column("is_numeric_value"),
)

# search_traces attribute keys (after MLflow's aliases: timestamp → timestamp_ms, ...) → warehouse expressions.
# end_time is MLflow's `timestamp_ms + coalesce(execution_time_ms, 0)`.
ATTRIBUTES: dict[str, sa.ColumnElement] = {
    "request_id": TRACES.c.trace_id,
    "timestamp_ms": TRACES.c.timestamp_ms,
    "execution_time_ms": TRACES.c.execution_time_ms,
    "end_time_ms": TRACES.c.timestamp_ms + sa.func.coalesce(TRACES.c.execution_time_ms, 0),
    "status": TRACES.c.status,
    "client_request_id": TRACES.c.client_request_id,
}
SPAN_COLUMNS = {"name": SPANS.c.name, "type": SPANS.c.span_type, "status": SPANS.c.status}
# MLflow leaves out spans that started this long before the filter's lower timestamp_ms bound.
SPAN_TIMESTAMP_TOLERANCE_MS = 10_000
SESSION_SCOPED = f'"{TraceMetadataKey.TRACE_SESSION}":'  # how MLflow spots a session-scoped assessment's metadata
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _TraceAnalyticsColumns:
    """The traces columns `get_trace_analytics_metadata_filter` reads (it looks them up by MLflow's column names).
    The warehouse has no cache_creation_input_tokens_above_1hr column: read as NULL. Only a token usage holding
    nothing but that key would be judged differently, and equality (which needs it) is refused."""

    def __getattr__(self, name: str) -> sa.ColumnElement:
        return TRACES.c[name] if name in TRACES.c else sa.null()


def _refuse(clause: dict[str, Any], why: str) -> MlflowException:
    return MlflowException(
        f"The filter `{_clause_text(clause)}` cannot be answered from the warehouse: {why}.",
        error_code=INVALID_PARAMETER_VALUE)


def _clause_text(clause: dict[str, Any]) -> str:
    value = "" if clause["value"] is None else f" {clause['value']!r}"
    return f"{clause['type']}.{clause['key']} {clause['comparator']}{value}"


def _ilike(column: sa.ColumnElement, pattern: str) -> sa.ColumnElement[bool]:
    # SQLite's lower() folds ASCII letters only; DuckDB's ILIKE and lower() fold every letter.
    lowered = sa.func.translate(column, "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    return lowered.like(pattern.translate(_ASCII_LOWER))


def _rlike(column: sa.ColumnElement, pattern: str) -> sa.ColumnElement[bool]:
    # MLflow's SQLite REGEXP is Python's re.search, and a pattern re cannot compile matches nothing. DuckDB uses
    # RE2: the same syntax but for backreferences and lookaround, which RE2 refuses (so do we, by name).
    try:
        re.compile(pattern)
    except re.error:
        return sa.false()
    try:
        with duckdb.connect() as check:  # RE2 compiles the pattern here, so a refusal is a clear 400, not a 500
            check.execute("SELECT regexp_matches('', ?)", [pattern])
    except duckdb.Error as exc:
        raise MlflowException(
            f"The RLIKE pattern {pattern!r} uses regular expression syntax the warehouse (RE2) does not support: "
            f"{str(exc).splitlines()[0]}", error_code=INVALID_PARAMETER_VALUE) from None
    return sa.func.regexp_matches(column, pattern)


COMPARATORS: dict[str, Callable[[sa.ColumnElement, Any], sa.ColumnElement[bool]]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "LIKE": lambda column, value: column.like(value),
    "ILIKE": _ilike,
    "RLIKE": _rlike,
    "IN": lambda column, value: column.in_(value),
    "NOT IN": lambda column, value: column.not_in(value),
}


def _exists(*conditions: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    # Correlated with `traces` only, so the predicate stays right in a query that also joins tags or assessments.
    return sa.exists().where(*conditions).correlate(TRACES)


def _compare(column: sa.ColumnElement, clause: dict[str, Any]) -> sa.ColumnElement[bool]:
    return COMPARATORS[clause["comparator"]](column, clause["value"])


def _kind(clause: dict[str, Any]) -> str:
    """The clause's kind, checked in SqlAlchemyStore's order (each `is_*` also rejects a comparator the kind
    does not allow, with MLflow's message)."""
    key_type, key, comparator = clause["type"], clause["key"], clause["comparator"]
    if SearchTraceUtils.is_issue(key_type, key, comparator):
        return "issue"
    if SearchTraceUtils.is_attribute(key_type, key, comparator):
        return "attribute"
    if SearchTraceUtils.is_tag(key_type, comparator) and key == TraceTagKey.TRACE_NAME:
        return "trace_name"
    if SearchTraceUtils.is_request_metadata(key_type, comparator):
        if key == TraceMetadataKey.TRACE_SESSION:
            return "session"
        if key in TRACE_ANALYTICS_COLUMNS_BY_METADATA_KEY:
            return "token_usage_or_cost"
        if key == TraceMetadataKey.SOURCE_RUN and comparator == "=":
            return "run"
        return "metadata"
    if SearchTraceUtils.is_tag(key_type, comparator):
        return "prompt" if key == TraceTagKey.LINKED_PROMPTS else "tag"
    if SearchTraceUtils.is_span(key_type, key, comparator):
        if key.startswith("attributes."):
            return "span_attribute"
        return "span_content" if key == SearchTraceUtils._SPAN_CONTENT_KEY else "span"
    if SearchTraceUtils.is_assessment(key_type, key, comparator):
        return "assessment"
    raise MlflowException(f"Invalid search expression type '{key_type}'", error_code=INVALID_PARAMETER_VALUE)


def _attribute(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
    if clause["key"] in SearchTraceUtils.NUMERIC_ATTRIBUTES and isinstance(clause["value"], str):
        # MLflow passes the quoted text to the database: SQLite orders numbers before text, Postgres refuses.
        raise _refuse(clause, f"{clause['key']} is a number; compare it with an unquoted number")
    return _compare(ATTRIBUTES[clause["key"]], clause)


def _trace_column(column: sa.ColumnElement) -> Callable[[dict[str, Any], list[str] | None], sa.ColumnElement[bool]]:
    """A tag or metadata key MLflow keeps as a trace_info column (trace name, session)."""

    def build(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
        if clause["comparator"] == "IS NULL":
            return column.is_(None)
        if clause["comparator"] == "IS NOT NULL":
            return column.is_not(None)
        return _compare(column, clause)

    return build


def _key_value(table: sa.TableClause) -> Callable[[dict[str, Any], list[str] | None], sa.ColumnElement[bool]]:
    """A tag or metadata entry: IS NULL means the trace has no entry with that key."""

    def build(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
        entry = [table.c.trace_id == TRACES.c.trace_id, table.c.key == clause["key"]]
        if clause["comparator"] == "IS NULL":
            return ~_exists(*entry)
        if clause["comparator"] == "IS NOT NULL":
            return _exists(*entry)
        return _exists(*entry, _compare(table.c.value, clause))

    return build


def _token_usage_or_cost(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
    if clause["comparator"] in ("=", "!="):
        # MLflow compares the JSON with the trace's columns exactly. The warehouse rounds costs to 1e-12 USD
        # and has no cache_creation_input_tokens_above_1hr column.
        raise _refuse(clause, "equality with a token usage or cost JSON needs MLflow's exact columns "
                              "(the warehouse rounds costs and has no cache_creation_input_tokens_above_1hr); "
                              "IS NULL and IS NOT NULL are supported")
    return get_trace_analytics_metadata_filter(clause["key"], clause["comparator"], clause["value"],
                                               _TraceAnalyticsColumns())


def _assessment(clause: dict[str, Any], scope: list[str] | None) -> sa.ColumnElement[bool]:
    """Feedback or expectation of that name, not overridden; a session-scoped one (its metadata names a session)
    counts for every trace of the session of the trace it is logged on, within the searched experiments."""
    matching = [ASSESSMENTS.c.assessment_type == clause["type"], ASSESSMENTS.c.name == clause["key"],
                ASSESSMENTS.c.valid == sa.true()]
    comparator, value = clause["comparator"], clause["value"]
    if comparator in SearchTraceUtils.NUMERIC_ASSESSMENT_COMPARATORS:
        # MLflow's aggregate: only real numbers are numeric (booleans and yes/no have an aggregate too, but no).
        matching += [ASSESSMENTS.c.is_numeric_value == sa.true(),
                     COMPARATORS[comparator](ASSESSMENTS.c.aggregate_value, value)]
    elif comparator in ("=", "!="):
        # Values are stored as JSON: a string matches its JSON text, a boolean or a number its bare text.
        equal = sa.or_(ASSESSMENTS.c.value_json == value, ASSESSMENTS.c.value_json == json.dumps(value))
        matching.append(equal if comparator == "=" else sa.not_(equal))
    elif comparator not in ("IS NULL", "IS NOT NULL"):
        matching.append(_compare(ASSESSMENTS.c.value_json, clause))  # LIKE, ILIKE, RLIKE on the JSON text

    session_traces = TRACES.alias("session_traces")
    sessions = (
        sa.select(session_traces.c.session_id)
        .join(ASSESSMENTS, ASSESSMENTS.c.trace_id == session_traces.c.trace_id)
        .where(session_traces.c.session_id.is_not(None), *matching, ASSESSMENTS.c.metadata_json.is_not(None),
               ASSESSMENTS.c.metadata_json.contains(SESSION_SCOPED))
        .correlate(None)
    )
    if scope is not None:
        sessions = sessions.where(session_traces.c.experiment_id.in_(scope))
    # `session_id IS NOT NULL` keeps the IN true or false, never NULL, so that IS NULL's negation holds too.
    found = sa.or_(_exists(ASSESSMENTS.c.trace_id == TRACES.c.trace_id, *matching),
                   sa.and_(TRACES.c.session_id.is_not(None), TRACES.c.session_id.in_(sessions)))
    return ~found if comparator == "IS NULL" else found


def _issue(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
    # An issue reference is an assessment of type `issue` named by the issue id (MLflow ignores `valid` here).
    return _exists(ASSESSMENTS.c.trace_id == TRACES.c.trace_id, ASSESSMENTS.c.assessment_type == "issue",
                   ASSESSMENTS.c.name == clause["value"])


def _prompt(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
    # MLflow validates the clause (in its words) before looking up the trace-to-prompt links.
    if clause["comparator"] != "=":
        raise MlflowException(
            f"Invalid comparator '{clause['comparator']}' for prompts filter. "
            "Only '=' is supported with format: prompt = \"name/version\"", error_code=INVALID_PARAMETER_VALUE)
    if clause["value"].count("/") != 1:
        raise MlflowException(f"Invalid prompts filter value '{clause['value']}'. "
                              'Expected format: prompt = "name/version"', error_code=INVALID_PARAMETER_VALUE)
    return _exists(LINKS.c.trace_id == TRACES.c.trace_id, LINKS.c.kind == "prompt_version",
                   LINKS.c.target_id == clause["value"])


def _run(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
    # A run's traces: those naming it in their metadata and those linked to it (mlflow.genai.evaluate,
    # link_traces_to_run), as MLflow's search.
    return sa.or_(_exists(LINKS.c.trace_id == TRACES.c.trace_id, LINKS.c.kind == "run",
                          LINKS.c.target_id == clause["value"]),
                  _exists(METADATA.c.trace_id == TRACES.c.trace_id, METADATA.c.key == TraceMetadataKey.SOURCE_RUN,
                          METADATA.c.value == clause["value"]))


def _refused(why: str) -> Callable[[dict[str, Any], list[str] | None], sa.ColumnElement[bool]]:
    def build(clause: dict[str, Any], _scope: list[str] | None) -> sa.ColumnElement[bool]:
        raise _refuse(clause, why)

    return build


# Filter kind → (what the predicate is on, how to build it). Span clauses are on one span (see trace_filter).
KINDS: dict[str, tuple[str, Callable[[dict[str, Any], list[str] | None], sa.ColumnElement[bool]]]] = {
    "attribute": ("trace", _attribute),
    "trace_name": ("trace", _trace_column(TRACES.c.trace_name)),
    "session": ("trace", _trace_column(TRACES.c.session_id)),
    "token_usage_or_cost": ("trace", _token_usage_or_cost),
    "tag": ("trace", _key_value(TAGS)),
    "metadata": ("trace", _key_value(METADATA)),
    "assessment": ("trace", _assessment),
    "issue": ("trace", _issue),
    "span": ("span", lambda clause, _scope: _compare(SPAN_COLUMNS[clause["key"]], clause)),
    "run": ("trace", _run),
    "prompt": ("trace", _prompt),
    "span_attribute": ("trace", _refused("span attributes are in the span content, which the warehouse does not copy")),
    "span_content": ("trace", _refused("the span content (full text) is not copied into the warehouse")),
}


def trace_filter(filter_string: str | None, *, experiment_ids: list[str] | None = None) -> sa.ColumnElement[bool]:
    """A predicate on the warehouse `traces` table: the trace matches the search_traces `filter_string`.

    `experiment_ids` are the experiments searched (None: all). The predicate does not restrict traces to them
    (the caller does), but a session-scoped assessment counts only when logged on a trace of one of them, as in
    MLflow. Raises MlflowException(INVALID_PARAMETER_VALUE) for a syntax error (MLflow's) and for a filter the
    warehouse cannot answer."""
    scope = None if experiment_ids is None else [str(e) for e in _parse_experiment_ids(experiment_ids)]
    on_trace, on_span = [], []
    span_lower_bound_ms = None
    for clause in SearchTraceUtils.parse_search_filter_for_search_traces(filter_string):
        clause["comparator"] = clause["comparator"].upper()
        on, build = KINDS[_kind(clause)]
        (on_span if on == "span" else on_trace).append(build(clause, scope))
        if clause["type"] == "attribute" and clause["key"] == "timestamp_ms" and clause["comparator"] in (">", ">="):
            bound = clause["value"]
            span_lower_bound_ms = bound if span_lower_bound_ms is None else max(span_lower_bound_ms, bound)
    if on_span:
        # Every span clause must hold for one span of the trace (MLflow's single EXISTS over spans).
        scoped = [SPANS.c.trace_id == TRACES.c.trace_id, SPANS.c.experiment_id == TRACES.c.experiment_id]
        if span_lower_bound_ms is not None:
            scoped.append(SPANS.c.start_time_ns >= (span_lower_bound_ms - SPAN_TIMESTAMP_TOLERANCE_MS) * 1_000_000)
        on_trace.append(_exists(*scoped, *on_span))
    return sa.and_(sa.true(), *on_trace)


def calculate_trace_filter_correlation(
    conn: sa.Connection, experiment_ids: list[str], filter_string1: str, filter_string2: str,
    base_filter: str | None = None,
) -> TraceFilterCorrelationResult:
    """MLflow's `calculate_trace_filter_correlation` from the warehouse: how many traces of the experiments match
    `base_filter` (all when empty), how many of those match each filter and both, and their NPMI.

    As MLflow, each filter is applied as the one search string `"{base_filter} and {filter}"` (so a lower
    timestamp bound in the base also bounds the filter's span clauses)."""
    scope = [str(e) for e in _parse_experiment_ids(experiment_ids)]

    def matching(filter_string: str) -> sa.ColumnElement[bool]:
        return trace_filter(f"{base_filter} and {filter_string}" if base_filter else filter_string,
                            experiment_ids=scope)

    first, second = matching(filter_string1), matching(filter_string2)
    universe = trace_filter(base_filter, experiment_ids=scope) if base_filter else sa.true()
    # Each trace's two matches once, as columns: used twice in the counts, a filter's subqueries would run twice.
    matches = (sa.select(first.label("first"), second.label("second")).select_from(TRACES)
               .where(TRACES.c.experiment_id.in_(scope), universe).subquery())
    count = sa.func.count
    total, count1, count2, joint = conn.execute(
        sa.select(count(), count().filter(matches.c.first), count().filter(matches.c.second),
                  count().filter(sa.and_(matches.c.first, matches.c.second)))
    ).one()
    npmi = calculate_npmi_from_counts(joint, count1, count2, total)
    return TraceFilterCorrelationResult(npmi=npmi.npmi, npmi_smoothed=npmi.npmi_smoothed, filter1_count=count1,
                                        filter2_count=count2, joint_count=joint, total_count=total)
