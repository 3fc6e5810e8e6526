"""The dimension facts: the values of the stored dimension kinds (status, trace name and user, span types and names,
models, error types, tools, tags, metadata: the registry's `Kind.stored_rows`) each trace has, kept in the warehouse
so that correlations, root causes and discovery count them instead of deriving them from 8M spans, tags and
metadata rows per request.

- `dimension_values` numbers each (name, value) once (a number is never reused) and says whether it is offered as
  a candidate;
- `trace_dimension_values` has a row (trace_key, value_id) per trace and value;
- `dimension_value_hours` counts, per experiment, UTC hour, evaluation or production and value, the traces that
  have it (discovery, and correlations over whole hours);
- `_dimension_facts_state` names the warehouse version they describe: its highest trace key and its trace count.

The `dimension_facts` asset brings them up to date after each extract (`refresh_facts`): it adds the facts of the
traces keyed above the last run's, and deletes those whose trace is gone or was copied again (under a new key).
Readers use them only while they describe the warehouse as it is (`facts_current`); otherwise they read the child
tables (slower, the same answers).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from assets.insights import registry
from assets.insights.queries import (
    DIMENSION_VALUES,
    HOUR_MS,
    TRACE_DIMENSION_VALUES,
    TRACES,
    InsightsQuery,
    bucket_start,
    describes_warehouse,
    hour_split,
    in_hours,
    record_version,
    recorded_version,
    traces_version,
    version_table,
)

STATE = version_table("_dimension_facts_state")
NEW_FACTS = sa.table("_new_facts", sa.column("trace_key"), sa.column("value_id"))  # a refresh's, before insertion
VALUE_HOURS = sa.table("dimension_value_hours", sa.column("experiment_id"), sa.column("hour_ms"),
                       sa.column("evaluation"), sa.column("value_id"), sa.column("traces"))


@dataclass(frozen=True)
class FactsRefresh:
    traces_added: int  # traces whose facts were added
    facts_added: int
    facts_deleted: int  # of traces gone or copied again
    values: int  # numbered (name, value) pairs in all
    facts: int  # rows in all


def facts_current(conn: sa.Connection) -> bool:
    """Whether the facts describe the warehouse's traces as they are now."""
    return describes_warehouse(conn, STATE)


def _inlined(statement: sa.Select, conn: sa.Connection) -> str:
    # The registry's own constants only, no user input: inlined, as DuckDB's CREATE TABLE AS takes no parameters.
    return str(statement.compile(conn, compile_kwargs={"literal_binds": True}))


def refresh_facts(conn: sa.Connection) -> FactsRefresh:
    """Bring the facts up to date with the warehouse's traces (inside the caller's transaction)."""
    covered_key, covered_traces = recorded_version(conn, STATE) or (0, 0)
    version = traces_version(conn)  # the refresh writes no traces: still the warehouse's version at its end
    count = version[1]

    def fact_count() -> int:  # (DuckDB's driver reports no rowcount)
        return conn.execute(sa.select(sa.func.count()).select_from(TRACE_DIMENSION_VALUES)).scalar()

    before = fact_count()
    still_there = conn.execute(sa.select(sa.func.count()).where(TRACES.c.trace_key <= covered_key)).scalar()
    if still_there < covered_traces:  # some covered trace was deleted or copied again: its facts go
        conn.execute(TRACE_DIMENSION_VALUES.delete().where(
            TRACE_DIMENSION_VALUES.c.trace_key.not_in(sa.select(TRACES.c.trace_key))))
    kept = fact_count()
    # The new traces' rows, kind by kind: their (name, value) pairs, then their facts as distinct (key, number)
    # pairs, cheaper than making the string triples distinct. One INSERT per table: with an INSERT per kind (in key
    # order), DuckDB 1.5.5 showed the transaction only the first two kinds' facts at 1M traces, after a kind with
    # none (no users); and it loses, at commit, a row group's worth of rows inserted into a table after an insert
    # of no rows from a scan or an ORDER BY into it in the same transaction.
    parts = [kind.stored_rows(lambda table: [table.c.trace_key > covered_key], distinct=False).subquery()
             for kind in registry.STORED_KINDS]
    pairs = sa.union(*(sa.select(rows.c.name, rows.c.value) for rows in parts)).subquery()
    unseen = sa.select(pairs).where(~sa.exists().where(DIMENSION_VALUES.c.name == pairs.c.name,
                                                       DIMENSION_VALUES.c.value == pairs.c.value)).subquery()
    first_id = sa.select(sa.func.coalesce(sa.func.max(DIMENSION_VALUES.c.value_id), 0)).scalar_subquery()
    conn.execute(DIMENSION_VALUES.insert().from_select(
        ["value_id", "name", "value", "offered"],
        sa.select(first_id + sa.func.row_number().over(order_by=(unseen.c.name, unseen.c.value)),
                  unseen.c.name, unseen.c.value, sa.true())))
    new_facts = sa.union_all(*(
        sa.select(rows.c.trace_key, DIMENSION_VALUES.c.value_id).distinct()
        .select_from(rows.join(DIMENSION_VALUES, sa.and_(DIMENSION_VALUES.c.name == rows.c.name,
                                                         DIMENSION_VALUES.c.value == rows.c.value)))
        for rows in parts))
    conn.exec_driver_sql(f"CREATE OR REPLACE TEMP TABLE _new_facts AS {_inlined(new_facts, conn)}")
    # Per hour, counted over the kept facts and the new ones (read from the temp table, not back from the
    # transaction's own writes, which DuckDB reads slowly).
    conn.execute(VALUE_HOURS.delete())
    every_fact = sa.union_all(sa.select(TRACE_DIMENSION_VALUES), sa.select(NEW_FACTS)).subquery()
    hour = bucket_start(TRACES.c.timestamp_ms, HOUR_MS).label("hour_ms")
    conn.execute(VALUE_HOURS.insert().from_select(
        ["experiment_id", "hour_ms", "evaluation", "value_id", "traces"],
        sa.select(TRACES.c.experiment_id, hour, TRACES.c.evaluation, every_fact.c.value_id, sa.func.count())
        .select_from(every_fact.join(TRACES, TRACES.c.trace_key == every_fact.c.trace_key))
        .group_by(TRACES.c.experiment_id, hour, TRACES.c.evaluation, every_fact.c.value_id)))
    # In key order (keys follow the traces' time): each row group then holds a narrow range of keys, so that the
    # facts of a few traces (the parts of hours at a range's ends) are read from a few row groups, not all.
    conn.execute(TRACE_DIMENSION_VALUES.insert().from_select(
        ["trace_key", "value_id"], sa.select(NEW_FACTS).order_by(NEW_FACTS.c.trace_key)))
    conn.exec_driver_sql("DROP TABLE _new_facts")
    # Which values are offered depends on every trace (e.g. a span name used below the root): decided again.
    conn.execute(DIMENSION_VALUES.update().values(offered=registry.offered()))
    record_version(conn, STATE, version)
    values = conn.execute(sa.select(sa.func.count()).select_from(DIMENSION_VALUES)).scalar()
    facts = fact_count()
    return FactsRefresh(traces_added=count - still_there, facts_added=facts - kept, facts_deleted=before - kept,
                        values=values, facts=facts)


def _in_hours(query: InsightsQuery, first: int | None, last: int | None) -> list[sa.ColumnElement[bool]]:
    return in_hours(query.experiment_ids, VALUE_HOURS.c.experiment_id, VALUE_HOURS.c.hour_ms, first, last)


def hourly_counts(query: InsightsQuery, production_only: bool) -> sa.Select | None:
    """(value_id, n): how many traces of the query's experiments and times have each stored value, from the hourly
    counts; None unless the time range is made of whole UTC hours (or open)."""
    whole, edges = hour_split(query.start_time, query.end_time)
    if whole is None or edges:
        return None
    return (sa.select(VALUE_HOURS.c.value_id, sa.func.sum(VALUE_HOURS.c.traces).label("n"))
            .where(*_in_hours(query, *whole), *([sa.not_(VALUE_HOURS.c.evaluation)] if production_only else []))
            .group_by(VALUE_HOURS.c.value_id))


def present_values(conn: sa.Connection, query: InsightsQuery) -> dict[str, list[str]]:
    """Each stored dimension name → its offered values that some trace of the query's experiments and times has
    (evaluation traces included, as discovery counts), sorted; read from the hourly counts, and from the facts
    of the traces in the parts of hours at the range's ends."""
    whole, edges = hour_split(query.start_time, query.end_time)
    present = [] if whole is None else [sa.select(VALUE_HOURS.c.value_id).where(*_in_hours(query, *whole))]
    # One semi join per part-hour: its traces' keys are a narrow range, which prunes the facts' row groups (an OR
    # of both ends would span the whole range between them).
    for low, high in edges:
        in_edge = sa.select(TRACES.c.trace_key).where(TRACES.c.experiment_id.in_(query.experiment_ids),
                                                      TRACES.c.timestamp_ms.between(low, high))
        present.append(sa.select(TRACE_DIMENSION_VALUES.c.value_id)
                       .where(TRACE_DIMENSION_VALUES.c.trace_key.in_(in_edge)))
    found: dict[str, list[str]] = {}
    # IN needs no distinct ids: UNION ALL, not a hash of the edges' 60k facts (4 ms of a 7-day discovery at 1M).
    for name, value in conn.execute(
            sa.select(DIMENSION_VALUES.c.name, DIMENSION_VALUES.c.value)
            .where(DIMENSION_VALUES.c.offered, DIMENSION_VALUES.c.value_id.in_(sa.union_all(*present)))
            .order_by(DIMENSION_VALUES.c.name, DIMENSION_VALUES.c.value)):
        found.setdefault(name, []).append(value)
    return found
