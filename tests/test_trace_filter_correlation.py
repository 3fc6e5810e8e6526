"""assets.insights.trace_filters against MLflow itself: one SQLite tracking store written through MLflow's store APIs,
extracted once into a warehouse.

1. MLflow's own tests of `calculate_trace_filter_correlation` (mlflow/mlflow
   tests/store/tracking/sqlalchemy_store/test_sqlalchemy_store_scorers.py), each in its own experiment: the
   warehouse gives MLflow's live answer and MLflow's literal expectations.
2. The filter translation: for each filter string and experiment scope, the traces the warehouse predicate selects
   are the traces `SqlAlchemyStore.search_traces` returns.
3. Errors: syntax errors are MLflow's (same message); what the warehouse cannot answer is INVALID_PARAMETER_VALUE.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from mlflow.entities import (
    AssessmentError,
    AssessmentSource,
    AssessmentSourceType,
    Expectation,
    Feedback,
    TraceInfo,
    TraceLocation,
    TraceState,
)
from mlflow.entities.assessment import IssueReference
from mlflow.entities.span import create_mlflow_span
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracing.constant import TraceMetadataKey
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from assets.insights.trace_filters import TRACES, calculate_trace_filter_correlation, trace_filter
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from resources.warehouse import attached_engine
from tests.conftest import HOSTILE_TAGS

OK, ERROR, UNSET = trace_api.StatusCode.OK, trace_api.StatusCode.ERROR, trace_api.StatusCode.UNSET
T0 = 1_700_000_000_000  # the oracle experiments' first trace, epoch ms
MINUTE = 60_000
HUMAN = AssessmentSource(AssessmentSourceType.HUMAN, "reviewer")
JUDGE = AssessmentSource(AssessmentSourceType.LLM_JUDGE, "judge")
SESSION = TraceMetadataKey.TRACE_SESSION


# ---------------------------------------------------------------------------------------------------------------
# Writing through MLflow's store (MLflow's test helpers, without mocks)
# ---------------------------------------------------------------------------------------------------------------

_span_ids = iter(range(1000, 10**6))


def make_span(trace_id: str, name: str, span_type: str = "LLM", status=UNSET, start_ns: int = 1_000_000_000,
              end_ns: int = 2_000_000_000, parent: int | None = None, span_id: int | None = None):
    """MLflow's `create_test_span`, with a real OpenTelemetry span context."""
    def context(number: int) -> trace_api.SpanContext:
        return trace_api.SpanContext(trace_id=12345, span_id=number, is_remote=False,
                                     trace_flags=trace_api.TraceFlags(1))

    span_id = span_id or next(_span_ids)
    otel = ReadableSpan(
        name=name, context=context(span_id), parent=context(parent) if parent else None,
        attributes={"mlflow.traceRequestId": json.dumps(trace_id), "mlflow.spanType": json.dumps(span_type)},
        start_time=start_ns, end_time=end_ns, status=trace_api.Status(status), resource=Resource.get_empty(),
    )
    return create_mlflow_span(otel, trace_id, span_type)


def start_trace(store: SqlAlchemyStore, experiment_id: str, *, trace_id: str | None = None,
                request_time: int | None = None, state=TraceState.OK, execution_duration: int | None = 100,
                tags: dict | None = None, metadata: dict | None = None, client_request_id: str | None = None) -> str:
    trace_id = trace_id or f"tr-{uuid.uuid4().hex}"
    store.start_trace(TraceInfo(
        trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=time.time_ns() // 1_000_000 if request_time is None else request_time,
        execution_duration=execution_duration, state=state, tags=tags or {}, trace_metadata=metadata or {},
        client_request_id=client_request_id,
    ))
    return trace_id


def correlation_trace(store: SqlAlchemyStore, experiment_id: str, spans: list[dict] | None = None,
                      tags: dict | None = None) -> str:
    """MLflow's `_create_trace_for_correlation`: span configurations become tags (no spans are logged)."""
    tags = dict(tags or {})
    if spans:
        types = [span.get("type", "LLM") for span in spans]
        statuses = [span.get("status", "OK") for span in spans]
        if "TOOL" in types:
            tags["primary_span_type"] = "TOOL"
        elif "LLM" in types:
            tags["primary_span_type"] = "LLM"
        if "LLM" in types:
            tags["has_llm"] = "true"
        if "TOOL" in types:
            tags["has_tool"] = "true"
        tags["has_error"] = "true" if "ERROR" in statuses else "false"
        if tool_count := types.count("TOOL"):
            tags["tool_count"] = str(tool_count)
    return start_trace(store, experiment_id, tags=tags)


# ---------------------------------------------------------------------------------------------------------------
# 1. MLflow's test cases for calculate_trace_filter_correlation, ported
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    experiment_ids: list[str]
    filter1: str
    filter2: str
    base_filter: str | None
    counts: tuple[int, int, int, int]  # MLflow's literal expectations: total, filter1, filter2, joint
    npmi: object = None  # a check of the npmi (and npmi_smoothed) MLflow's test makes


def _basic(store):
    exp = store.create_experiment("correlation_basic")
    for _ in range(10):
        correlation_trace(store, exp, [{"name": "tool_operation", "type": "TOOL", "status": "ERROR"}])
    for _ in range(5):
        correlation_trace(store, exp, [{"name": "llm_call", "type": "LLM", "status": "OK"}])
    return Case([exp], 'tags.primary_span_type = "TOOL"', 'tags.has_error = "true"', None, (15, 10, 10, 10),
                lambda r: r.npmi == pytest.approx(1.0))


def _perfect(store):
    exp = store.create_experiment("correlation_perfect")
    for _ in range(8):
        correlation_trace(store, exp, [{"name": "operation", "type": "TOOL", "status": "ERROR"}])
    for _ in range(7):
        correlation_trace(store, exp, [{"name": "operation", "type": "LLM", "status": "OK"}])
    return Case([exp], 'tags.primary_span_type = "TOOL"', 'tags.has_error = "true"', None, (15, 8, 8, 8),
                lambda r: r.npmi == pytest.approx(1.0) and r.npmi_smoothed > 0.8)


def _count_expressions(store):
    exp = store.create_experiment("correlation_count_expressions")
    for i in range(15):
        spans = [{"type": "TOOL", "name": f"tool_{j}"} for j in range(5 if i < 10 else 2)]
        correlation_trace(store, exp, [*spans, {"type": "LLM", "name": "llm_call"}])
    return Case([exp], 'tags.tool_count = "5"', 'tags.has_llm = "true"', None, (15, 10, 15, 10))


def _negative_correlation(store):
    exp = store.create_experiment("negative_correlation_test")
    for _ in range(10):
        correlation_trace(store, exp, [{"type": "LLM", "status": "ERROR"}], tags={"version": "v1"})
    for _ in range(10):
        correlation_trace(store, exp, [{"type": "LLM", "status": "OK"}], tags={"version": "v2"})
    return Case([exp], 'tags.version = "v1"', 'tags.has_error = "false"', None, (20, 10, 10, 0),
                lambda r: r.npmi == pytest.approx(-1.0))


def _zero_counts(store):
    exp = store.create_experiment("zero_counts_test")
    for _ in range(5):
        correlation_trace(store, exp, [{"type": "LLM", "status": "OK"}])
    return Case([exp], 'tags.has_error = "true"', 'tags.has_llm = "true"', None, (5, 0, 5, 0),
                lambda r: math.isnan(r.npmi))


def _span_filters_deduplicate_traces(store):
    exp = store.create_experiment("span_filter_dedup_correlation")
    first = correlation_trace(store, exp)
    store.log_spans(exp, [make_span(first, "tool_match_1", "TOOL", OK), make_span(first, "tool_match_2", "TOOL", OK)])
    second = correlation_trace(store, exp)
    store.log_spans(exp, [make_span(second, "tool_match_3", "TOOL", OK)])
    third = correlation_trace(store, exp)
    store.log_spans(exp, [make_span(third, "llm_no_match", "LLM", ERROR)])
    return Case([exp], 'span.type = "TOOL"', 'span.status = "OK"', None, (3, 2, 2, 2))


def _multiple_experiments(store):
    first, second = store.create_experiment("multi_exp_1"), store.create_experiment("multi_exp_2")
    for _ in range(4):
        correlation_trace(store, first, [{"type": "TOOL", "status": "OK"}], tags={"env": "prod"})
    correlation_trace(store, first, [{"type": "LLM", "status": "OK"}], tags={"env": "prod"})
    correlation_trace(store, second, [{"type": "TOOL", "status": "OK"}], tags={"env": "dev"})
    for _ in range(4):
        correlation_trace(store, second, [{"type": "LLM", "status": "OK"}], tags={"env": "dev"})
    return Case([first, second], 'tags.env = "prod"', 'tags.primary_span_type = "TOOL"', None, (10, 5, 5, 4),
                lambda r: r.npmi > 0.4)


def _independent_events(store):
    exp = store.create_experiment("independent_test")
    for span_type in ("TOOL", "LLM"):
        for status in ("ERROR", "OK"):
            for _ in range(5):
                correlation_trace(store, exp, [{"type": span_type, "status": status}])
    return Case([exp], 'tags.primary_span_type = "TOOL"', 'tags.has_error = "true"', None, (20, 10, 10, 5),
                lambda r: abs(r.npmi) < 0.1)


def _simplified_example(store):
    exp = store.create_experiment("simple_correlation_test")
    for tags, times in (({"category": "A", "status": "success"}, 5), ({"category": "A", "status": "failure"}, 3),
                        ({"category": "B", "status": "success"}, 7)):
        for _ in range(times):
            start_trace(store, exp, tags=tags)
    return Case([exp], 'tags.category = "A"', 'tags.status = "success"', None, (15, 8, 12, 5))


def _empty_experiment_list(store):
    return Case([], 'tags.has_error = "true"', 'tags.primary_span_type = "TOOL"', None, (0, 0, 0, 0),
                lambda r: math.isnan(r.npmi))


def _base_filter_traces(store):
    exp = store.create_experiment("base_filter_test")
    for i in range(5):
        start_trace(store, exp, trace_id=f"tr-early-{i}", request_time=1_000_000_000_000 + i, tags={
            "has_error": "true" if i < 3 else "false", "has_tool": "true" if i % 2 == 0 else "false"})
    for i in range(10):
        tags = {}
        if i < 6:
            tags["has_error"] = "true"
        if i < 3 or i == 6:
            tags["has_tool"] = "true"
        start_trace(store, exp, trace_id=f"tr-later-{i}", request_time=2_000_000_000_000 + i, tags=tags)
    return exp


def _expected_base_npmi(result) -> bool:
    p_error, p_tool, p_joint = 6 / 10, 4 / 10, 3 / 10
    return abs(result.npmi - math.log(p_joint / (p_error * p_tool)) / -math.log(p_joint)) < 0.001


PORTED = {
    "basic": _basic,
    "perfect": _perfect,
    "count_expressions": _count_expressions,
    "negative_correlation": _negative_correlation,
    "zero_counts": _zero_counts,
    "span_filters_deduplicate_traces": _span_filters_deduplicate_traces,
    "multiple_experiments": _multiple_experiments,
    "independent_events": _independent_events,
    "simplified_example": _simplified_example,
    "empty_experiment_list": _empty_experiment_list,
}


# ---------------------------------------------------------------------------------------------------------------
# 2. The oracle experiments: every kind of filter has traces that match it and traces that do not
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Oracle:
    a: str  # experiment ids
    b: str
    ids: dict[str, str]  # short name → trace id
    run_id: str
    linked_trace: str  # linked to run_id with link_traces_to_run only (no mlflow.sourceRun metadata)


def _oracle(store: SqlAlchemyStore) -> Oracle:
    a, b = store.create_experiment("oracle-a"), store.create_experiment("oracle-b")
    run_id = store.create_run(a, user_id="u", start_time=0, tags=[], run_name="source-run").info.run_id
    ids: dict[str, str] = {}

    def trace(name: str, minute: int, experiment: str = a, spans: tuple = (), **fields) -> str:
        trace_id = ids[name] = start_trace(store, experiment, request_time=T0 + minute * MINUTE, **fields)
        start_ns = (T0 + minute * MINUTE) * 1_000_000
        if spans:
            root = next(_span_ids)
            store.log_spans(experiment, [
                make_span(trace_id, "root", "CHAIN", OK, start_ns, start_ns + 9_000_000, span_id=root),
                *(make_span(trace_id, span_name, span_type, status, start_ns + 1_000_000, start_ns + 2_000_000,
                            parent=root) for span_name, span_type, status in spans)])
        return trace_id

    usage = {TraceMetadataKey.TOKEN_USAGE: json.dumps({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}),
             TraceMetadataKey.COST: json.dumps({"input_cost": 0.0001, "output_cost": 0.0002, "total_cost": 0.0003})}
    trace("hostile", 0, spans=(("search", "TOOL", OK), ("llm", "LLM", OK)), client_request_id="req-0",
          tags={"mlflow.traceName": "chat", "env": "prod", "pct": "100%", **HOSTILE_TAGS},
          metadata={SESSION: "s1", TraceMetadataKey.TRACE_USER: "u1", TraceMetadataKey.SOURCE_RUN: run_id, **usage})
    trace("failed_tool", 1, spans=(("search", "TOOL", ERROR), ("llm", "LLM", OK)), state=TraceState.ERROR,
          execution_duration=2500, client_request_id="req-1",
          tags={"mlflow.traceName": "chat", "env": "dev", "under_score": "a_b", "unicode": "Éclair"},
          metadata={SESSION: "s1", TraceMetadataKey.TRACE_USER: "u2", "app.version": "1.0"})
    trace("capital_name", 2, spans=(("llm", "LLM", OK),), execution_duration=40,
          tags={"mlflow.traceName": "Chat", "env": "Prod", "unicode": "éclair", "under_score": "aXb"},
          metadata={SESSION: "s2", TraceMetadataKey.TOKEN_USAGE: json.dumps({"input_tokens": 7})})
    trace("in_progress", 3, state=TraceState.IN_PROGRESS, execution_duration=None, tags={"env": "staging"})
    trace("expectations", 4, spans=(("retrieve", "RETRIEVER", OK),), metadata={SESSION: "s2"},
          tags={"mlflow.traceName": "qa"})
    trace("judged", 5, spans=(("llm", "LLM", ERROR),), state=TraceState.ERROR, execution_duration=900,
          tags={"mlflow.traceName": "qa", "version": "v2"}, metadata={TraceMetadataKey.SOURCE_RUN: "other-run"})
    trace("session_first", 6, spans=(("search", "TOOL", OK),), metadata={SESSION: "s3"})
    trace("session_second", 7, metadata={SESSION: "s3"}, tags={"env": "prod"})
    trace("session_other_experiment", 8, experiment=b, metadata={SESSION: "s3"}, tags={"env": "prod"})
    trace("plain_b", 9, experiment=b, spans=(("llm", "LLM", OK),), tags={"env": "dev"})
    trace("no_session_scoped", 10, tags={"mlflow.traceName": "solo"})
    # Its span started a minute before the trace's timestamp (spans logged before the trace): MLflow's span
    # clauses skip spans that start more than 10 s before the filter's lower timestamp bound.
    ids["early_span"] = f"tr-{uuid.uuid4().hex}"
    early_ns = (T0 + 11 * MINUTE - MINUTE) * 1_000_000
    store.log_spans(a, [make_span(ids["early_span"], "search", "TOOL", OK, early_ns, early_ns + 1_000_000)])
    start_trace(store, a, trace_id=ids["early_span"], request_time=T0 + 11 * MINUTE)
    linked_trace = ids["linked"] = trace("linked", 12, tags={"env": "dev"})
    store.link_traces_to_run([linked_trace], run_id)

    def feedback(trace: str, name: str, value, **fields) -> str:
        return store.create_assessment(Feedback(name=name, value=value, trace_id=ids[trace],
                                                source=fields.pop("source", HUMAN), **fields)).assessment_id

    feedback("hostile", "thumbs", True)
    feedback("failed_tool", "thumbs", False)
    feedback("failed_tool", "score", 0.2, source=JUDGE)
    overridden = feedback("capital_name", "score", 0.1, source=JUDGE)
    feedback("capital_name", "score", 0.9, overrides=overridden)  # the 0.1 is no longer valid
    feedback("capital_name", "label", "yes")
    feedback("judged", "score", None, source=JUDGE, error=AssessmentError(error_code="TIMEOUT", error_message="boom"))
    feedback("judged", "judge", "No", source=JUDGE)
    feedback("judged", "count", 5)
    feedback("in_progress", "count", "5")
    feedback("in_progress", "label", "It's \"quoted\"; ' OR 1=1 --")
    # Session-scoped feedback counts for every trace of the session of the trace it is logged on, in the searched
    # experiments; MLflow reads the session from that trace, not from the metadata.
    feedback("session_first", "session_quality", "good", metadata={SESSION: "s3"})
    feedback("hostile", "session_score", 4, metadata={SESSION: "s1"})
    feedback("expectations", "session_quality", "bad", metadata={SESSION: "not-s2"})
    feedback("no_session_scoped", "session_quality", "good", metadata={SESSION: "s9"})  # its trace has no session
    feedback("session_second", "session_quality", "meh", metadata={"reviewer": "x"})  # not session-scoped
    for name, value in (("expected_answer", "Refresh from the menu."),
                        ("expected_facts", {"facts": ["kb-101", "hourly"], "n": 2})):
        store.create_assessment(Expectation(name=name, value=value, trace_id=ids["expectations"], source=HUMAN))
    store.create_assessment(IssueReference(issue_id="iss-1", issue_name="tool failures", trace_id=ids["failed_tool"]))
    return Oracle(a, b, ids, run_id, linked_trace)


@dataclass
class World:
    store: SqlAlchemyStore
    engine: sa.Engine
    cases: dict[str, Case]
    base_experiment: str
    run_case: tuple[str, str, str]  # experiment, run id, MLflow's run_id test
    oracle: Oracle


@pytest.fixture(scope="module")
def world(empty_store_file: Path, tmp_path_factory) -> World:
    directory = tmp_path_factory.mktemp("trace-filters")
    path = Path(shutil.copyfile(empty_store_file, directory / "mlflow.db"))
    store = SqlAlchemyStore(f"sqlite:///{path}", str(directory / "artifacts"))
    cases = {name: build(store) for name, build in PORTED.items()}
    base_experiment = _base_filter_traces(store)

    # MLflow's test_calculate_trace_filter_correlation_run_id_filter_matches_linked_traces
    run_experiment = store.create_experiment("run_id_filter_correlation")
    run_id = store.create_run(run_experiment, user_id="user", start_time=0, tags=[], run_name="test_run").info.run_id
    start_trace(store, run_experiment, metadata={TraceMetadataKey.SOURCE_RUN: run_id})
    store.link_traces_to_run([correlation_trace(store, run_experiment)], run_id)
    correlation_trace(store, run_experiment)

    oracle = _oracle(store)
    warehouse = str(directory / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(f"sqlite:///{path}"), warehouse)
    engine = attached_engine(warehouse)
    yield World(store, engine, cases, base_experiment, (run_experiment, run_id, f'run_id = "{run_id}"'), oracle)
    engine.dispose()


def warehouse_correlation(world: World, *args, **kwargs):
    with world.engine.connect() as conn:
        return calculate_trace_filter_correlation(conn, *args, **kwargs)


def same_result(ours, theirs) -> None:
    """Every count, and npmi / npmi_smoothed (NaN equals NaN), as MLflow's."""
    counts = ("total_count", "filter1_count", "filter2_count", "joint_count")
    assert [getattr(ours, c) for c in counts] == [getattr(theirs, c) for c in counts]
    for field in ("npmi", "npmi_smoothed"):
        mine, mlflows = getattr(ours, field), getattr(theirs, field)
        assert (math.isnan(mine) and math.isnan(mlflows)) or mine == mlflows, (field, mine, mlflows)


@pytest.mark.parametrize("name", PORTED)
def test_mlflow_correlation_cases(world: World, name: str):
    case = world.cases[name]
    args = (case.experiment_ids, case.filter1, case.filter2, case.base_filter)
    ours, theirs = warehouse_correlation(world, *args), world.store.calculate_trace_filter_correlation(*args)
    same_result(ours, theirs)
    assert (ours.total_count, ours.filter1_count, ours.filter2_count, ours.joint_count) == case.counts
    if case.npmi is not None:
        assert case.npmi(ours)


def test_mlflow_correlation_with_base_filter(world: World):
    later = 2_000_000_000_000
    args = ([world.base_experiment], 'tags.has_error = "true"', 'tags.has_tool = "true"')
    base = f"timestamp_ms >= {later} and timestamp_ms < {later + 100}"
    ours = warehouse_correlation(world, *args, base_filter=base)
    same_result(ours, world.store.calculate_trace_filter_correlation(*args, base_filter=base))
    assert (ours.total_count, ours.filter1_count, ours.filter2_count, ours.joint_count) == (10, 6, 4, 3)
    assert _expected_base_npmi(ours)

    no_base = warehouse_correlation(world, *args)
    same_result(no_base, world.store.calculate_trace_filter_correlation(*args))
    assert (no_base.total_count, no_base.filter1_count, no_base.filter2_count, no_base.joint_count) == (15, 9, 7, 5)


def test_mlflow_run_id_case_counts_traces_linked_to_the_run(world: World):
    """MLflow's run_id test: a run's traces are those naming it in their metadata and those linked to it only
    through link_traces_to_run (the warehouse's trace_links)."""
    experiment, _, run_filter = world.run_case
    theirs = world.store.calculate_trace_filter_correlation([experiment], run_filter, 'status = "OK"')
    assert (theirs.total_count, theirs.filter1_count, theirs.filter2_count, theirs.joint_count) == (3, 2, 3, 2)
    same_result(warehouse_correlation(world, [experiment], run_filter, 'status = "OK"'), theirs)


# ---------------------------------------------------------------------------------------------------------------
# 2. The filter translation: the warehouse selects what search_traces returns
# ---------------------------------------------------------------------------------------------------------------

def oracle_filters(oracle: Oracle) -> list[str]:
    ids = oracle.ids
    at = {name: T0 + minute * MINUTE for name, minute in (("judged", 5), ("early_span", 11), ("session_first", 6))}
    return [
        "",
        # attributes
        f"timestamp_ms > {at['judged']}", f"timestamp >= {at['judged']}", f"timestamp_ms < {at['judged']}",
        f"timestamp_ms <= {at['judged']}", f"timestamp_ms = {at['judged']}", f"timestamp_ms != {at['judged']}",
        f"trace.timestamp_ms > {at['judged'] + 0.5}",
        "execution_time_ms > 500", "execution_time <= 100", "execution_time_ms != 100",
        f"end_time_ms > {at['judged'] + 500}", f"end_time <= {T0 + 3 * MINUTE}", f"end_time = {T0 + 3 * MINUTE}",
        "status = 'OK'", "status != 'OK'", "attributes.status IN ('ERROR', 'IN_PROGRESS')", "status NOT IN ('OK')",
        "status LIKE 'O%'", "status LIKE 'ok'", "status ILIKE 'ok'", "status RLIKE '^E'", "status RLIKE 'PROG'",
        f"request_id = '{ids['hostile']}'", f"request_id IN ('{ids['hostile']}', '{ids['judged']}')",
        f"request_id NOT IN ('{ids['hostile']}')",
        "client_request_id = 'req-0'", "client_request_id != 'req-0'", "client_request_id NOT IN ('req-1')",
        "client_request_id LIKE 'req-%'", "client_request_id IN ('req-0', 'req-9')",
        # the trace name: a tag in the filter, a column in MLflow's store and in the warehouse
        "name = 'chat'", "trace.name != 'chat'", "name LIKE 'C%'", "name ILIKE 'CHAT'", "name RLIKE 'at$'",
        "tags.`mlflow.traceName` IS NULL", "tag.mlflow.traceName IS NOT NULL", "tags.NAME = 'qa'",
        # tags, hostile values included
        "tags.env = 'prod'", "tags.env != 'prod'", "tags.env LIKE 'pr%'", "tags.env LIKE 'Pr%'", "tags.env ILIKE 'PROD'",
        "tags.env RLIKE '^(prod|dev)$'", "tags.env IS NULL", "tags.env IS NOT NULL", "tag.version = 'v2'",
        "tags.sql = \"' OR 1=1 --\"", "tags.sql != \"' OR 1=1 --\"", "tags.sql LIKE \"%OR 1=1%\"",
        "tags.note LIKE \"it's a %\"", "tags.note LIKE '%DROP TABLE traces; --'", "tags.note ILIKE '%\"QUOTED\"%'",
        "tags.`multi line` LIKE 'line one%'", "tags.`multi line` LIKE '%two \\ backslash'",
        "tags.`multi line` RLIKE 'one\\nline'", "tags.pct LIKE '100%'", "tags.pct = '100%'", "tags.pct = '100'",
        "tags.under_score LIKE 'a_b'", "tags.under_score = 'a_b'", "tags.unicode ILIKE 'éclair'",
        "tags.unicode ILIKE 'ÉCLAIR'", "tags.unicode LIKE '_clair'", "tags.missing = 'x'",
        # metadata: the session is a column, user and run entries
        f"metadata.`{SESSION}` = 's1'", f"metadata.`{SESSION}` != 's1'", f"metadata.`{SESSION}` IS NULL",
        f"metadata.`{SESSION}` IS NOT NULL", f"metadata.`{SESSION}` LIKE 's%'", f"metadata.`{SESSION}` ILIKE 'S2'",
        f"metadata.`{SESSION}` RLIKE '[13]'",
        "metadata.`mlflow.trace.user` = 'u1'", "metadata.mlflow.trace.user != 'u1'", "metadata.`mlflow.trace.user` IS NULL",
        "metadata.`mlflow.trace.user` IS NOT NULL", "metadata.`mlflow.trace.user` LIKE 'u%'",
        "metadata.`app.version` = '1.0'", f"run_id = '{oracle.run_id}'", f"metadata.mlflow.sourceRun = '{oracle.run_id}'",
        "prompt = 'my-prompt/1'", f"run_id != '{oracle.run_id}'", f"metadata.mlflow.sourceRun LIKE '{oracle.run_id[:6]}%'",
        "metadata.mlflow.sourceRun IS NULL", "metadata.mlflow.sourceRun IS NOT NULL",
        # token usage and cost: MLflow's columns
        "metadata.`mlflow.trace.tokenUsage` IS NOT NULL", "metadata.`mlflow.trace.tokenUsage` IS NULL",
        "metadata.`mlflow.trace.cost` IS NOT NULL", "metadata.`mlflow.trace.cost` IS NULL",
        # spans: all clauses hold for one span; a lower timestamp bound prunes spans started 10 s before it
        "span.name = 'search'", "span.name != 'llm'", "span.type = 'TOOL'", "span.type IN ('RETRIEVER', 'TOOL')",
        "span.type NOT IN ('CHAIN', 'LLM')", "span.status = 'ERROR'", "span.status != 'OK'",
        "span.name LIKE 'se%'", "span.name ILIKE 'SEARCH'", "span.name RLIKE 'ar'",
        "span.type = 'TOOL' and span.status = 'ERROR'", "span.type = 'TOOL' and span.name = 'llm'",
        "span.type = 'TOOL' and span.name = 'search' and status = 'OK'",
        f"timestamp_ms >= {at['early_span']} and span.type = 'TOOL'",
        f"timestamp_ms >= {at['early_span'] - MINUTE} and span.type = 'TOOL'",
        f"span.type = 'TOOL' and timestamp_ms > {at['session_first'] - 1} and timestamp_ms > 5",
        f"timestamp_ms < {at['early_span'] + 1} and span.type = 'TOOL'",
        # feedback and expectations: JSON values, numeric aggregates, overridden and errored ones, sessions
        "feedback.thumbs = 'true'", "feedback.thumbs = 'false'", "feedback.thumbs != 'true'",
        "feedback.thumbs IS NULL", "feedback.thumbs IS NOT NULL", "feedback.thumbs > 0", "feedback.thumbs >= 0",
        "feedback.score > 0.5", "feedback.score >= 0.2", "feedback.score < 0.5", "feedback.score <= 0.1",
        "feedback.score = '0.9'", "feedback.score = '0.1'", "feedback.score != '0.9'", "feedback.score IS NULL",
        "feedback.score IS NOT NULL", "feedback.score = 'null'", "feedback.score LIKE 'nu%'",
        "feedback.judge = 'No'", "feedback.judge < 1", "feedback.judge ILIKE '%no%'",
        "feedback.count = '5'", "feedback.count > 4", "feedback.count >= 5",
        "feedback.label = 'yes'", "feedback.label LIKE '%ye%'", "feedback.label ILIKE '%YES%'",
        "feedback.label RLIKE 'y.s'", "feedback.label LIKE \"%It's %\"",
        "feedback.label LIKE '%OR 1=1%'", "feedback.quality IS NULL", "feedback.quality IS NOT NULL",
        "feedback.session_quality = 'good'", "feedback.session_quality != 'good'", "feedback.session_quality IS NULL",
        "feedback.session_quality IS NOT NULL", "feedback.session_quality LIKE '%ba%'", "feedback.session_score > 3",
        "feedback.session_score <= 3", "feedback.session_quality = 'meh'",
        "expectation.expected_answer = 'Refresh from the menu.'", "expectation.expected_facts LIKE '%kb-101%'",
        "expectation.expected_facts IS NOT NULL", "expectation.expected_facts IS NULL", "feedback.expected_facts IS NOT NULL",
        "expectation.expected_facts RLIKE '\"n\": 2'",
        # aliases MLflow's parser maps: feedback.name is the trace name tag, attribute.text is span content
        "feedback.name = 'qa'",
        # issues: assessments of type issue
        "issue.id = 'iss-1'", "issue.id = 'iss-2'",
        # combinations
        "status = 'OK' and tags.env = 'prod' and feedback.thumbs = 'true'",
        f"metadata.`{SESSION}` = 's3' and feedback.session_quality = 'good' and tags.env = 'prod'",
        "feedback.score > 0.1 and span.type = 'LLM' and name ILIKE 'chat'",
    ]


def mlflow_trace_ids(store: SqlAlchemyStore, experiment_ids: list[str], filter_string: str) -> set[str]:
    found, token = set(), None
    while True:
        page, token = store.search_traces(experiment_ids, filter_string=filter_string, max_results=50,
                                          page_token=token)
        found |= {info.trace_id for info in page}
        if not token:
            return found


def warehouse_trace_ids(world: World, experiment_ids: list[str], filter_string: str) -> set[str]:
    predicate = trace_filter(filter_string, experiment_ids=experiment_ids)
    with world.engine.connect() as conn:
        rows = conn.execute(sa.select(TRACES.c.trace_id).where(TRACES.c.experiment_id.in_(experiment_ids), predicate))
        return {row[0] for row in rows}


def test_every_filter_selects_what_search_traces_returns(world: World):
    oracle = world.oracle
    scopes = ([oracle.a], [oracle.a, oracle.b], [oracle.b])
    everything = mlflow_trace_ids(world.store, scopes[1], "")
    mismatches, matched_some, missed_some = [], 0, 0
    for filter_string in oracle_filters(oracle):
        for scope in scopes:
            expected = mlflow_trace_ids(world.store, scope, filter_string)
            actual = warehouse_trace_ids(world, scope, filter_string)
            if actual != expected:
                mismatches.append((filter_string, scope, sorted(actual - expected), sorted(expected - actual)))
            if scope == scopes[1]:
                matched_some += bool(expected)
                missed_some += expected != everything
    assert not mismatches, "\n".join(map(str, mismatches))
    # The oracle discriminates: nearly every filter selects some traces and leaves out others (the rest are
    # there to select nothing: an overridden value, a boolean compared as a number, ...).
    filters = len(oracle_filters(oracle))
    assert matched_some >= 0.88 * filters and missed_some >= filters - 3


def test_session_scoped_feedback_covers_its_session_in_the_searched_experiments(world: World):
    """Spelled out: one session-scoped feedback on `session_first` (session s3) counts for every trace of s3, and
    for the s3 trace of the other experiment only when that experiment is searched too."""
    oracle, ids = world.oracle, world.oracle.ids
    s3 = {ids["session_first"], ids["session_second"]}
    good = "feedback.session_quality = 'good'"
    assert warehouse_trace_ids(world, [oracle.a], good) == s3 | {ids["no_session_scoped"]}
    assert warehouse_trace_ids(world, [oracle.b], good) == set()
    assert warehouse_trace_ids(world, [oracle.a, oracle.b], good) == s3 | {ids["no_session_scoped"],
                                                                            ids["session_other_experiment"]}
    # The session comes from the trace the feedback is on (s2), not from the metadata ("not-s2").
    assert warehouse_trace_ids(world, [oracle.a], "feedback.session_quality = 'bad'") == {
        ids["expectations"], ids["capital_name"]}


def test_correlation_over_the_oracle_matches_mlflow(world: World):
    oracle = world.oracle
    early = T0 + 11 * MINUTE
    combinations = [
        ("feedback.thumbs = 'false'", "span.status = 'ERROR'", None),
        ("feedback.session_quality IS NOT NULL", "tags.env = 'prod'", None),
        ("feedback.session_quality IS NULL", "status = 'OK'", f"timestamp_ms >= {T0}"),
        ("span.type = 'TOOL'", "status = 'OK'", f"timestamp_ms >= {early}"),  # the base prunes the early span
        ("span.type = 'TOOL'", "name = 'chat'", f"timestamp_ms < {early} and execution_time_ms > 50"),
        ("feedback.score > 0.5", "tags.env ILIKE 'prod'", "status != 'IN_PROGRESS'"),
        ("tags.sql = \"' OR 1=1 --\"", "metadata.`mlflow.trace.tokenUsage` IS NOT NULL", None),
        ("", "status = 'ERROR'", None),
        ("status = 'OK'", "status = 'OK'", "tags.env = 'nothing'"),
        ("issue.id = 'iss-1'", "feedback.thumbs = 'false'", ""),
    ]
    for scope in ([oracle.a], [oracle.a, oracle.b], [oracle.b, "999999"]):
        for first, second, base in combinations:
            ours = warehouse_correlation(world, scope, first, second, base)
            same_result(ours, world.store.calculate_trace_filter_correlation(scope, first, second, base))
    # Experiment ids as MLflow reads them: integers, so "0007" is experiment 7.
    padded = warehouse_correlation(world, [f"000{oracle.a}"], "status = 'OK'", "tags.env = 'prod'")
    same_result(padded, world.store.calculate_trace_filter_correlation([f"000{oracle.a}"], "status = 'OK'",
                                                                        "tags.env = 'prod'"))
    assert padded.total_count > 0


def test_the_predicate_stays_right_joined_with_other_tables(world: World):
    """Subqueries correlate with `traces` only: joining assessments in the outer query changes nothing."""
    oracle = world.oracle
    assessments = sa.table("assessments", sa.column("trace_id"), sa.column("name"))
    predicate = trace_filter("feedback.score > 0.5", experiment_ids=[oracle.a])
    query = (sa.select(TRACES.c.trace_id).distinct()
             .join(assessments, assessments.c.trace_id == TRACES.c.trace_id)
             .where(TRACES.c.experiment_id == oracle.a, assessments.c.name == "label", predicate))
    with world.engine.connect() as conn:
        assert {row[0] for row in conn.execute(query)} == {oracle.ids["capital_name"]}


# ---------------------------------------------------------------------------------------------------------------
# 3. Errors
# ---------------------------------------------------------------------------------------------------------------

SYNTAX_ERRORS = [
    "status =", "foo.bar = 'x'", "status > 'OK'", "tags.x = 5", "feedback.x > 'a'", "feedback.x = 1",
    "span.foo = 'x'", "span.name IS NULL", "issue.foo = 'x'", "issue.id != 'x'", "tags.env IN ('a')",
    "name IN ('a')", "status = 'OK' or status = 'ERROR'", "status IS NULL", "timestamp_ms LIKE '1%'",
    "metadata.`mlflow.trace.cost` LIKE '%'", "metadata.x IN ('a')", "run_id IN ('a')", "span.content = 'x'",
    "tags.a = 'x'; tags.b = 'y'", "span.attributes. = 'x'", "prompt != 'p/1'", "prompt = 'p'", "feedback.x IN ('a')",
]


@pytest.mark.parametrize("filter_string", SYNTAX_ERRORS)
def test_syntax_errors_are_mlflows(world: World, filter_string: str):
    with pytest.raises(MlflowException) as theirs:
        world.store.search_traces([world.oracle.a], filter_string=filter_string)
    with pytest.raises(MlflowException) as ours:
        warehouse_trace_ids(world, [world.oracle.a], filter_string)
    assert ours.value.error_code == theirs.value.error_code == "INVALID_PARAMETER_VALUE"
    assert ours.value.message == theirs.value.message


UNSUPPORTED = {
    "span.attributes.`mlflow.spanType` LIKE '%TOOL%'": "span content",
    "span.attributes.model = 'gpt'": "span content",
    "span.content LIKE '%search%'": "span content",
    "trace.text LIKE '%search%'": "span content",
    """metadata.`mlflow.trace.tokenUsage` = '{"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}'""":
        "cache_creation_input_tokens_above_1hr",
    """metadata.`mlflow.trace.cost` != '{"input_cost": 0.0001}'""": "rounds costs",
    "timestamp_ms > '1700000000000'": "unquoted number",
    "execution_time = '100'": "unquoted number",
    "span.name RLIKE '(?=se)arch'": "RE2",
    "tags.env RLIKE '(p)\\1'": "RE2",
}


@pytest.mark.parametrize("filter_string", UNSUPPORTED)
def test_what_the_warehouse_cannot_answer_is_refused(world: World, filter_string: str):
    world.store.search_traces([world.oracle.a], filter_string=filter_string)  # a filter MLflow answers
    with pytest.raises(MlflowException, match=UNSUPPORTED[filter_string]) as refused:
        trace_filter(filter_string)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    if "RLIKE" not in filter_string:
        assert "cannot be answered from the warehouse" in refused.value.message


def test_a_refused_filter_is_refused_in_correlation_too(world: World):
    with pytest.raises(MlflowException, match="span content") as refused:
        warehouse_correlation(world, [world.oracle.a], "status = 'OK'", "span.attributes.x = 'y'", None)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException, match="span content"):
        warehouse_correlation(world, [world.oracle.a], "status = 'OK'", "status = 'OK'", "trace.text LIKE '%a%'")


def test_invalid_experiment_ids_are_mlflows_error(world: World):
    with pytest.raises(MlflowException) as theirs:
        world.store.calculate_trace_filter_correlation(["abc"], "status = 'OK'", "status = 'OK'")
    with pytest.raises(MlflowException) as ours:
        warehouse_correlation(world, ["abc"], "status = 'OK'", "status = 'OK'")
    assert ours.value.message == theirs.value.message
    assert ours.value.error_code == "INVALID_PARAMETER_VALUE"


def test_an_invalid_python_regex_matches_nothing_as_in_mlflow(world: World):
    """MLflow's SQLite REGEXP returns false for a pattern Python cannot compile."""
    assert mlflow_trace_ids(world.store, [world.oracle.a], "tags.env RLIKE '['") == set()
    assert warehouse_trace_ids(world, [world.oracle.a], "tags.env RLIKE '['") == set()
