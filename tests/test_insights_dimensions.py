"""Dimensions discovered from the data; NPMI requests and correlation rankings equal MLflow's
`calculate_trace_filter_correlation` for the same filters."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentSource, AssessmentSourceType
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.dimensions import (
    CorrelationsRequest,
    NpmiRequest,
    calculate_dimensions_npmi,
    correlation,
    correlations,
    dimensions_discovery,
)
from assets.insights.npmi import Dimension, DimensionError, calculate_npmi
from assets.insights.queries import TRACES, InsightsQuery
from assets.insights.registry import KINDS, DimensionInfo, kind_of, mlflow_filter_string, population, trace_keys
from assets.traces.extract import extract_traces
from resources.trace_sources import SqlTrackingStore
from tests.conftest import HOSTILE_TAGS, Store


def test_discovery_comes_from_the_data(warehouse, mlflow_store, seeded_store: Store):
    with warehouse.connect() as conn:
        found = {d.name: d for d in dimensions_discovery(conn, InsightsQuery(experiment_ids=[seeded_store.experiment_id])).data}
    tools = {
        p.dimensions["span_name"]
        for p in mlflow_store.query_trace_metrics(
            [seeded_store.experiment_id], MetricViewType.SPANS, "span_count", [MetricAggregation(AggregationType.COUNT)],
            dimensions=["span_name"], filters=["span.type = 'TOOL'"],
        )
    }
    assert {name.removeprefix("tools.") for name in found if name.startswith("tools.")} == tools
    assert {f"tags.{key}" for key in HOSTILE_TAGS} | {"tags.persona", "status", "span.type", "latency"} <= set(found)
    assert found["status"].parameters[0].enum_values == ["ERROR", "OK"]
    assert "TOOL" in found["span.type"].parameters[0].enum_values
    assert found["tags.sql"].parameters[0].enum_values == [HOSTILE_TAGS["sql"]]
    assert [p.name for p in found["assessment.relevance"].parameters] == ["threshold", "operator"]
    assert found["assessment.user_thumbs"].parameters[0].type == "boolean"
    assert found["assessment.tone"].parameters[0].enum_values == ["curt", "friendly", "neutral"]
    assert not any(name.startswith("tags.mlflow.") for name in found)

    def mlflow_values(view, metric: str, dimension: str) -> set[str]:
        points = mlflow_store.query_trace_metrics([seeded_store.experiment_id], view, metric,
                                                  [MetricAggregation(AggregationType.COUNT)], dimensions=[dimension])
        return {p.dimensions[dimension] for p in points} - {None}

    trace_names = mlflow_values(MetricViewType.TRACES, "trace_count", "trace_name")
    assert set(found["trace_name"].parameters[0].enum_values) == trace_names
    assert set(found["model"].parameters[0].enum_values) == mlflow_values(MetricViewType.SPANS, "span_count",
                                                                           "span_model_name") != set()
    # span names that are neither a tool's nor a trace's (those have their own kinds)
    assert set(found["span.name"].parameters[0].enum_values) == (
        mlflow_values(MetricViewType.SPANS, "span_count", "span_name") - tools - trace_names) != set()
    assert found["error.type"].parameters[0].enum_values == ["TimeoutError", "ValueError"]  # the demo's failures
    assert "assessment.user_thumbs" in found["session"].parameters[0].enum_values
    assert "metadata.mlflow.source.name" in found and not any(
        name.startswith(("metadata.mlflow.trace", "metadata.mlflow.sourceRun")) for name in found)
    assert "user" not in found  # the demo's traces name no user
    assert found["session"].mlflow_limits and found["tools.web.fetch"].mlflow_limits and not found["model"].mlflow_limits


# (dimension as the REST API sends it: string parameters like the seed's, MLflow filter for the same traces)
PAIRS = [
    ({"name": "latency", "parameters": {"threshold": "2000", "operator": ">"}}, "trace.execution_time_ms > 2000",
     {"name": "assessment.user_thumbs", "parameters": {"value": "false"}}, "feedback.user_thumbs = 'false'"),
    ({"name": "assessment.relevance", "parameters": {"threshold": 0.5, "operator": "<"}}, "feedback.relevance < 0.5",
     {"name": "tags.channel", "parameters": {"value": "slack"}}, "tags.channel = 'slack'"),
    ({"name": "assessment.tone", "parameters": {"value": "curt"}}, "feedback.tone = 'curt'",
     {"name": "assessment.user_thumbs", "parameters": {"value": True}}, "feedback.user_thumbs = 'true'"),
    # a tag value with quotes and SQL in it
    ({"name": "tags.sql", "parameters": {"value": HOSTILE_TAGS["sql"]}}, f'tags.sql = "{HOSTILE_TAGS["sql"]}"',
     {"name": "status", "parameters": {"value": "OK"}}, "attributes.status = 'OK'"),
    # never together: npmi -1
    ({"name": "status", "parameters": {"value": "OK"}}, "attributes.status = 'OK'",
     {"name": "status", "parameters": {"value": "ERROR"}}, "attributes.status = 'ERROR'"),
    # one side matches nothing: NaN, returned as null
    ({"name": "tags.persona", "parameters": {"value": "nobody"}}, "tags.persona = 'nobody'",
     {"name": "status", "parameters": {"value": "ERROR"}}, "attributes.status = 'ERROR'"),
]


@pytest.mark.parametrize("first, filter1, second, filter2", PAIRS, ids=[p[1] + " ~ " + p[3] for p in PAIRS])
def test_npmi_request_equals_calculate_trace_filter_correlation(
    warehouse, mlflow_store, seeded_store: Store, first, filter1, second, filter2
):
    request = NpmiRequest(experiment_ids=[seeded_store.experiment_id], dimension1=first, dimension2=second)
    with warehouse.connect() as conn:
        ours = calculate_dimensions_npmi(conn, request)
    theirs = mlflow_store.calculate_trace_filter_correlation([seeded_store.experiment_id], filter1, filter2)
    assert (ours.total_count, ours.dimension1.count, ours.dimension2.count, ours.intersection.count) == (
        theirs.total_count, theirs.filter1_count, theirs.filter2_count, theirs.joint_count,
    )
    if math.isnan(theirs.npmi):
        assert ours.correlation.npmi_score is None and ours.correlation.strength is None
    else:
        assert math.isclose(ours.correlation.npmi_score, theirs.npmi, abs_tol=1e-12)
        assert math.isclose(ours.correlation.npmi_smoothed, theirs.npmi_smoothed, abs_tol=1e-12)
    if filter1 == "attributes.status = 'OK'":
        assert ours.intersection.count == 0 and ours.correlation.npmi_score == -1.0
        assert (ours.correlation.strength, ours.correlation.direction) == ("Strong", "negative")


@pytest.mark.parametrize("score, strength, direction", [
    (0.71, "Strong", "positive"), (-0.9, "Strong", "negative"), (0.7, "Moderate", "positive"),
    (-0.4, "Moderate", "negative"), (0.39, "Weak", "positive"), (0.0, "Weak", "none"),
])
def test_strength_bands(score, strength, direction):
    assert (correlation(score, score).strength, correlation(score, score).direction) == (strength, direction)


TARGETS = [
    (Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.user_thumbs = 'false'"),
    (Dimension(name="status", parameters={"value": "ERROR"}), "attributes.status = 'ERROR'"),
]


@pytest.mark.parametrize("target, target_filter", TARGETS, ids=[t[1] for t in TARGETS])
def test_correlations_rank_every_dimension_with_mlflows_counts(
    warehouse, mlflow_store, seeded_store: Store, target, target_filter
):
    query = InsightsQuery(experiment_ids=[seeded_store.experiment_id])
    with warehouse.connect() as conn:
        ranked = correlations(conn, CorrelationsRequest(**query.model_dump(), dimension=target, limit=None))
        pairs = {(c.dimension.name, c.value): calculate_npmi(conn, query, target, c.dimension) for c in ranked.data}
    families = {c.dimension.name.split(".")[0] for c in ranked.data}
    assert {"tools", "tags", "span", "latency", "assessment"} <= families | {"status"}
    scores = [c.correlation.npmi_score for c in ranked.data]
    assert scores == sorted(scores, reverse=True) and all(c.intersection_count >= 1 for c in ranked.data)
    assert not any(c.dimension.name == target.name for c in ranked.data)
    compared: set[str] = set()
    for candidate in ranked.data:
        pair = pairs[(candidate.dimension.name, candidate.value)]
        assert (pair.dimension1_count, pair.dimension2_count, pair.joint_count) == (
            ranked.dimension.count, candidate.count, candidate.intersection_count,
        )
        assert math.isclose(pair.npmi, candidate.correlation.npmi_score, abs_tol=1e-12)
        mlflow_filter = mlflow_filter_string(candidate.dimension)
        if mlflow_filter:
            theirs = mlflow_store.calculate_trace_filter_correlation(
                [seeded_store.experiment_id], target_filter, mlflow_filter
            )
            assert (theirs.filter2_count, theirs.joint_count) == (candidate.count, candidate.intersection_count)
            assert math.isclose(theirs.npmi, candidate.correlation.npmi_score, abs_tol=1e-12)
            compared.add(candidate.dimension.name.split(".")[0])
    # each family MLflow can express
    assert compared >= {"tools", "tags", "span", "latency", "assessment", "trace_name", "model", "error", "metadata"}
    assert "session" in families  # in a session with another outcome (no MLflow filter)


def test_correlations_honour_limit_and_support(warehouse, seeded_store: Store):
    target = TARGETS[1][0]
    with warehouse.connect() as conn:
        every = correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id], dimension=target,
                                                       limit=None))
        top = correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id], dimension=target,
                                                     limit=3, min_support=2))
    supported = [c for c in every.data if c.intersection_count >= 2]
    assert [(c.dimension, c.intersection_count) for c in top.data] == [
        (c.dimension, c.intersection_count) for c in supported[:3]
    ]
    assert len(supported) < len(every.data)


def test_bad_target_names_the_problem(warehouse, seeded_store: Store):
    with warehouse.connect() as conn, pytest.raises(DimensionError, match="unknown dimension 'mood'"):
        correlations(conn, CorrelationsRequest(experiment_ids=[seeded_store.experiment_id],
                                               dimension=Dimension(name="mood", parameters={"value": "x"})))


@pytest.mark.parametrize("dimension, expected", [
    (Dimension(name="tags.note", parameters={"value": HOSTILE_TAGS["note"]}), None),  # both quote kinds
    (Dimension(name="tags.sql", parameters={"value": "' OR 1=1 --"}), "tags.`sql` = \"' OR 1=1 --\""),
    (Dimension(name="tools.web.fetch", parameters={"value": "success"}), None),
    (Dimension(name="tools.web.fetch", parameters={"value": "error"}),
     "span.type = 'TOOL' AND span.name = 'web.fetch' AND span.status = 'ERROR'"),
    (Dimension(name="tools.web.fetch", parameters={}), "span.type = 'TOOL' AND span.name = 'web.fetch'"),
    (Dimension(name="user", parameters={"value": "o'neil"}), "metadata.`mlflow.trace.user` = \"o'neil\""),
    (Dimension(name="metadata.app.version", parameters={"value": 2}), "metadata.`app.version` = '2'"),
    (Dimension(name="model", parameters={"value": "gpt-4o.mini"}),
     "span.attributes.`mlflow.llm.model` RLIKE '^gpt\\-4o\\.mini$'"),
    (Dimension(name="error.type", parameters={"value": "Quota_Exceeded"}), None),  # LIKE's _ matches any character
    (Dimension(name="session", parameters={"outcome": "status", "value": "ERROR"}), None),
    (Dimension(name="assessment.relevance", parameters={"threshold": "0.5", "operator": "<="}),
     "feedback.`relevance` <= 0.5"),
    (Dimension(name="assessment.user_thumbs", parameters={"value": False}), "feedback.`user_thumbs` = 'false'"),
])
def test_mlflow_filter_strings(dimension, expected):
    assert mlflow_filter_string(dimension) == expected


@pytest.mark.parametrize("dimension, message", [
    (Dimension(name="session", parameters={"value": False}), "needs parameter 'outcome'"),
    (Dimension(name="session", parameters={"outcome": "session"}), "needs parameter 'outcome'"),
    (Dimension(name="session", parameters={"outcome": "mood", "value": "x"}), "unknown dimension 'mood'"),
    (Dimension(name="span.colour", parameters={"value": "x"}), "unknown dimension 'span.colour'"),
    (Dimension(name="metadata.", parameters={"value": "x"}), "unknown dimension 'metadata.'"),
    (Dimension(name="user"), "dimension 'user' needs parameter 'value'"),
])
def test_bad_dimensions_of_the_new_kinds_name_the_problem(dimension, message):
    with pytest.raises(DimensionError, match=message):
        trace_keys(dimension)


class QuotaExceeded_(Exception):  # noqa: N801 - an exception type whose name MLflow's LIKE cannot match exactly
    pass


@pytest.fixture(scope="module")
def varied(empty_store_file: Path, tmp_path_factory) -> tuple[Store, sa.Engine, SqlAlchemyStore]:
    """Traces with what the demo lacks: three users (one with a quote), sessions and traces without one, user
    metadata, two models (with regex characters), two trace names, a tool failing with three exception types, tags,
    thumbs and feedback on a whole session. Returns the store, its warehouse and MLflow's own store over it."""
    folder = tmp_path_factory.mktemp("varied")
    path = Path(shutil.copyfile(empty_store_file, folder / "mlflow.db"))
    uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("varied", artifact_location=(folder / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    failures = {1: ValueError, 4: ValueError, 7: KeyError, 9: QuotaExceeded_}
    trace_ids_ = []
    for i in range(12):
        metadata = {"mlflow.trace.user": ["ann", "bob", "o'neil"][i % 3], "app.version": "v1" if i < 6 else "v2"}
        if i < 10:
            metadata["mlflow.trace.session"] = f"s{i % 4}"
        try:
            with mlflow.start_span("chat" if i % 3 else "export", span_type="AGENT") as root:
                trace_ids_.append(root.trace_id)
                mlflow.update_current_trace(metadata=metadata, tags={"channel": "web" if i < 8 else "slack"})
                with mlflow.start_span("llm", span_type="CHAT_MODEL") as llm:
                    llm.set_attribute("mlflow.llm.model", "claude-3.5" if i % 2 else "gpt-4o+mini")
                if i % 2 == 0:
                    with mlflow.start_span("rerank", span_type="RERANKER"):
                        pass
                try:
                    with mlflow.start_span("kb.lookup", span_type="TOOL"):
                        if i in failures:
                            raise failures[i]("the lookup failed")
                except ValueError:
                    pass  # the tool failed, the trace answered anyway
        except (KeyError, QuotaExceeded_):
            pass  # the trace failed
    human = AssessmentSource(AssessmentSourceType.HUMAN, "user-1")
    for i, thumbs in {0: True, 1: False, 2: True, 3: True, 4: False, 7: False}.items():
        mlflow.log_feedback(trace_id=trace_ids_[i], name="user_thumbs", value=thumbs, source=human)
    # one verdict on a whole conversation (session s0: traces 0, 4, 8), logged on one of its traces
    mlflow.log_feedback(trace_id=trace_ids_[4], name="session_resolved", value=False, source=human,
                        metadata={"mlflow.trace.session": "s0"})
    warehouse_path = str(folder / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(uri), warehouse_path)
    engine = sa.create_engine(f"duckdb:///{warehouse_path}", connect_args={"read_only": True})
    yield Store(uri, experiment_id, trace_ids_, path), engine, SqlAlchemyStore(uri, str(folder / "artifacts"))
    engine.dispose()


def _selected(conn: sa.Connection, query: InsightsQuery, dimension: Dimension) -> set[str]:
    return set(conn.execute(sa.select(TRACES.c.trace_id).where(*population(query),
                                                               TRACES.c.trace_key.in_(trace_keys(dimension)))).scalars())


def _searched(mlflow_store: SqlAlchemyStore, experiment_id: str, filter_string: str) -> set[str]:
    traces, _ = mlflow_store.search_traces([experiment_id], filter_string=filter_string, max_results=1000)
    return {trace.trace_id for trace in traces}


def _examples(info: DimensionInfo) -> list[Dimension]:
    """A dimension per discovered value (each tool state, a threshold for numbers)."""
    first = info.parameters[0]
    if first.name == "outcome":
        return []  # session: another dimension inside, tested on its own
    if first.name == "threshold":
        return [Dimension(name=info.name, parameters={"threshold": 0, "operator": ">="})]
    values = first.enum_values or []
    return [Dimension(name=info.name, parameters={"value": value == "true" if first.type == "boolean" else value})
            for value in values]


def test_every_discovered_value_selects_the_traces_mlflows_search_selects(varied):
    """The registry's selector and its MLflow filter agree trace by trace, kind by kind, on MLflow's own search."""
    store, engine, mlflow_store = varied
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    compared, unexpressed = set(), set()
    with engine.connect() as conn:
        found = dimensions_discovery(conn, query).data
        for info in found:
            for dimension in _examples(info):
                ours = _selected(conn, query, dimension)
                assert ours or info.parameters[0].type == "boolean", dimension  # discovery offers both booleans
                mlflow_filter = mlflow_filter_string(dimension)
                if mlflow_filter is None:
                    assert info.mlflow_limits, dimension  # the registry says what MLflow cannot express
                    unexpressed.add((dimension.name, str(dimension.parameters.get("value"))))
                    continue
                assert ours == _searched(mlflow_store, store.experiment_id, mlflow_filter), (dimension, mlflow_filter)
                compared.add(kind_of(dimension.name)[0].name)
    assert compared == set(KINDS) - {"session"}, compared  # every kind but session, on this store
    assert unexpressed == {("tools.kb.lookup", "success"), ("error.type", "QuotaExceeded_")}
    names = {info.name for info in found}
    assert {"user", "trace_name", "model", "error.type", "span.name", "metadata.app.version", "session"} <= names
    errors = next(info for info in found if info.name == "error.type").parameters[0].enum_values
    assert errors == ["KeyError", "QuotaExceeded_", "ValueError"]


def test_feedback_on_a_session_is_about_every_trace_of_it_in_correlations_too(varied):
    store, engine, mlflow_store = varied
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    resolved = Dimension(name="assessment.session_resolved", parameters={"value": False})
    with engine.connect() as conn:
        assert _selected(conn, query, resolved) == _searched(mlflow_store, store.experiment_id,
                                                             "feedback.session_resolved = 'false'") == {
            store.trace_ids[i] for i in (0, 4, 8)}
        for target in (resolved, Dimension(name="assessment.user_thumbs", parameters={"value": False})):
            ranked = correlations(conn, CorrelationsRequest(experiment_ids=[store.experiment_id], dimension=target,
                                                            limit=None))
            assert ranked.data and ranked.dimension.count == len(_selected(conn, query, target))
            for candidate in ranked.data:  # one pass over the candidates counts what each selector selects
                pair = calculate_npmi(conn, query, target, candidate.dimension)
                assert (pair.dimension2_count, pair.joint_count) == (candidate.count, candidate.intersection_count), (
                    candidate.dimension)
    assert any(c.dimension == resolved for c in ranked.data)  # against thumbs-down: trace 4 has both


def test_npmi_counts_session_feedback_by_the_traces_it_is_about_in_a_cut_range(varied):
    """A verdict on a whole session counts for each of its traces in the range, also when the trace it was logged
    on (trace 4 of s0 = traces 0, 4, 8) is outside it; every kind of selector against every other, over ranges cut
    between the traces, equals the selected traces among the counted ones, and correlations count each candidate
    as calculate-npmi does."""
    store, engine, _ = varied
    dimensions = [Dimension(name="assessment.session_resolved", parameters={"value": False}),
                  Dimension(name="assessment.user_thumbs", parameters={"value": False}),
                  Dimension(name="status", parameters={"value": "ERROR"}),
                  Dimension(name="session", parameters={"outcome": "assessment.user_thumbs", "value": False}),
                  Dimension(name="tools.kb.lookup", parameters={"value": "error"}),
                  Dimension(name="user", parameters={"value": "bob"})]
    with engine.connect() as conn:
        time_of = dict(conn.execute(sa.select(TRACES.c.trace_id, TRACES.c.timestamp_ms)).all())
        times = [time_of[trace_id] for trace_id in store.trace_ids]
        ranges = [{"start_time": times[5], "end_time": times[9]},  # traces 5-9: 8 of s0, not 0 or 4
                  {"end_time": times[3]}, {"start_time": times[1] + 1}]
        for time_range in ranges:
            query = InsightsQuery(experiment_ids=[store.experiment_id], **time_range)
            counted = set(conn.execute(sa.select(TRACES.c.trace_key).where(*population(query))).scalars())
            selected = [counted & set(conn.execute(trace_keys(d)).scalars()) for d in dimensions]
            for i, j in itertools.combinations(range(len(dimensions)), 2):
                result = calculate_npmi(conn, query, dimensions[i], dimensions[j])
                assert (result.total_count, result.dimension1_count, result.dimension2_count, result.joint_count) \
                    == (len(counted), len(selected[i]), len(selected[j]), len(selected[i] & selected[j])), (
                        time_range, dimensions[i], dimensions[j])
            for target in dimensions[:3]:  # correlations count each candidate among the same counted traces
                ranked = correlations(conn, CorrelationsRequest(**query.model_dump(), dimension=target, limit=None))
                for candidate in ranked.data:
                    pair = calculate_npmi(conn, query, target, candidate.dimension)
                    assert (ranked.total_count, ranked.dimension.count, candidate.count, candidate.intersection_count) \
                        == (pair.total_count, pair.dimension1_count, pair.dimension2_count, pair.joint_count), (
                            time_range, target, candidate.dimension)
        assert calculate_npmi(conn, InsightsQuery(experiment_ids=[store.experiment_id], **ranges[0]), dimensions[0],
                              dimensions[2]).dimension1_count == 1  # trace 8, by the session


def test_sessions_with_a_thumbs_down_are_every_trace_of_those_sessions(varied):
    store, engine, mlflow_store = varied
    query = InsightsQuery(experiment_ids=[store.experiment_id])
    with engine.connect() as conn:
        ours = _selected(conn, query, Dimension(name="session", parameters={"outcome": "assessment.user_thumbs",
                                                                            "value": False}))
        errors = _selected(conn, query, Dimension(name="session", parameters={"outcome": "status", "value": "ERROR"}))
        ranked = correlations(conn, CorrelationsRequest(experiment_ids=[store.experiment_id], limit=None,
                                                        dimension=Dimension(name="status", parameters={"value": "OK"})))
    # MLflow in two steps: the sessions of the thumbs-down traces, then every trace of those sessions
    down, _ = mlflow_store.search_traces([store.experiment_id], filter_string="feedback.user_thumbs = 'false'")
    sessions = {trace.trace_metadata.get("mlflow.trace.session") for trace in down} - {None}
    theirs = set().union(*(_searched(mlflow_store, store.experiment_id, f"metadata.`mlflow.trace.session` = '{s}'")
                           for s in sessions))
    assert ours == theirs and len(ours) == 8 > len(down) == 3
    # traces 7 and 9 failed: sessions s3 (3, 7) and s1 (1, 5, 9)
    assert errors == {store.trace_ids[i] for i in (1, 3, 5, 7, 9)}
    sessions_ranked = {c.value: c for c in ranked.data if c.dimension.name == "session"}
    assert "status is ERROR" not in sessions_ranked  # the target's own dimension, by way of its sessions
    assert sessions_ranked["user_thumbs is false"].count == 8


def test_discovery_lists_at_most_fifty_values_and_offers_sessions_only_where_there_are_some(
        empty_store_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tag with 50 values lists them; one with 51 is a free string; a store without sessions offers no `session`."""
    path = Path(shutil.copyfile(empty_store_file, tmp_path / "mlflow.db"))
    mlflow.set_tracking_uri(f"sqlite:///{path}")
    experiment_id = mlflow.create_experiment("many-values", artifact_location=(tmp_path / "art").as_uri())
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; undone after the test
    mlflow.set_experiment(experiment_id=experiment_id)
    for i in range(51):
        with mlflow.start_span("chat", span_type="AGENT"):
            mlflow.update_current_trace(tags={"fifty": f"v{i % 50:02d}", "many": f"v{i:02d}"})
    warehouse_path = str(tmp_path / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(f"sqlite:///{path}"), warehouse_path)
    engine = sa.create_engine(f"duckdb:///{warehouse_path}", connect_args={"read_only": True})
    with engine.connect() as conn:
        found = {d.name: d for d in dimensions_discovery(conn, InsightsQuery(experiment_ids=[experiment_id])).data}
    engine.dispose()
    assert found["tags.fifty"].parameters[0].enum_values == [f"v{i:02d}" for i in range(50)]
    assert found["tags.many"].parameters[0].enum_values is None and found["tags.many"].parameters[0].type == "string"
    assert found["status"].parameters[0].enum_values == ["OK"] and "session" not in found
