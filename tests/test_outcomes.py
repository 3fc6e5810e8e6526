"""Outcomes are declared in the outcomes file (validated with file:line), default to MLflow's conventions, and give
root causes that are positive, supported and named in plain words; evaluation traces count only when asked for.
MLflow's own search is the oracle: its filters for the same traces, and its definition of evaluation-run traces."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest
import sqlalchemy as sa
from mlflow.entities import AssessmentError, AssessmentSource, AssessmentSourceType
from mlflow.genai.scorers import scorer
from mlflow.genai.scorers.online.constants import EXCLUDE_EVAL_RUN_TRACES_FILTER
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from assets.insights.dimensions import CorrelationsRequest, correlations
from assets.insights.npmi import calculate_npmi
from assets.insights.outcomes import OutcomeRules, OutcomesFileError, load_outcomes, outcomes, outcomes_path
from assets.insights.queries import TRACES
from assets.insights.registry import Dimension, Population, mlflow_filter_string, phrase, population, trace_keys
from assets.insights.rollups import write_rollups, write_root_causes
from assets.traces.extract import extract_traces
from resources import settings
from resources.trace_sources import SqlTrackingStore
from resources.warehouse import sqlalchemy_engine
from tests.test_insights_facts import insights_answers, refreshed
# the store written by real autologging (its fixtures, built once for this module too)
from tests.test_autolog import AutologgedStore, autologged_store, autologged_warehouse, fake_openai  # noqa: F401


class Built:
    def __init__(self, uri: str, production: str, evaluations_only: str, warehouse: str, mlflow_store: SqlAlchemyStore):
        self.uri, self.production, self.evaluations_only = uri, production, evaluations_only
        self.warehouse, self.mlflow_store = warehouse, mlflow_store

    def search(self, filter_string: str, experiment_id: str | None = None) -> set[str]:
        traces, _ = self.mlflow_store.search_traces([experiment_id or self.production], filter_string=filter_string,
                                                    max_results=1000)
        return {trace.trace_id for trace in traces}


def _evaluate(experiment_id: str) -> None:
    """A real mlflow.genai.evaluate run: three traces (one failed) with a code scorer's feedback."""
    mlflow.set_experiment(experiment_id=experiment_id)

    @scorer
    def short(outputs) -> bool:
        return len(str(outputs)) < 50

    @mlflow.trace(name="chat")
    def predict(question: str) -> str:
        if question == "fail":
            raise RuntimeError("the agent failed")
        return f"about {question}"

    mlflow.genai.evaluate(data=[{"inputs": {"question": q}} for q in ("a", "b", "fail")], predict_fn=predict,
                          scorers=[short])


@pytest.fixture(scope="module")
def built(empty_store_file: Path, tmp_path_factory) -> Built:
    """Production traces with a tool that fails, failed traces, and every kind of feedback (thumbs, a yes/no judge,
    a 1-5 score with an errored run, a 0-1 score, tone, a boolean where true is bad); an evaluation run in the same
    experiment; and an experiment holding evaluation traces only."""
    folder = tmp_path_factory.mktemp("outcomes")
    path = Path(shutil.copyfile(empty_store_file, folder / "mlflow.db"))
    uri = f"sqlite:///{path}"
    mlflow.set_tracking_uri(uri)
    production = mlflow.create_experiment("production", artifact_location=(folder / "art").as_uri())
    evaluations_only = mlflow.create_experiment("evaluations", artifact_location=(folder / "art-evals").as_uri())
    mlflow.set_experiment(experiment_id=production)
    ids = []
    for i in range(16):
        try:
            with mlflow.start_span("chat", span_type="AGENT") as root:
                ids.append(root.trace_id)
                try:
                    with mlflow.start_span("search", span_type="TOOL"):
                        if i < 5:
                            raise ValueError("the search index is down")
                except ValueError:
                    pass  # the agent answered without search
                with mlflow.start_span("db.write", span_type="TOOL"):
                    if i in (5, 6, 7):
                        raise KeyError("no such row")
        except KeyError:
            pass  # the trace failed
    human, judge = (AssessmentSource(AssessmentSourceType.HUMAN, "user-1"),
                    AssessmentSource(AssessmentSourceType.LLM_JUDGE, "judge"))
    for i, trace_id in enumerate(ids):
        if i < 13:
            mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=i >= 6 or i == 4, source=human)
        mlflow.log_feedback(trace_id=trace_id, name="correctness", value="no" if i < 5 else "yes", source=judge)
        if i < 15:
            mlflow.log_feedback(trace_id=trace_id, name="helpfulness", value=2 if i < 5 else 4 + i % 2, source=judge)
        mlflow.log_feedback(trace_id=trace_id, name="relevance", value=0.2 if i < 8 else 0.9, source=judge)
        mlflow.log_feedback(trace_id=trace_id, name="tone", value="curt" if i % 4 == 0 else "friendly", source=judge)
        mlflow.log_feedback(trace_id=trace_id, name="is_toxic", value=i in (0, 1, 2), source=judge)
    mlflow.log_feedback(trace_id=ids[15], name="helpfulness", source=judge,
                        error=AssessmentError(error_code="TIMEOUT", error_message="the judge timed out"))
    _evaluate(production)
    _evaluate(evaluations_only)
    warehouse = str(folder / "warehouse.duckdb")
    extract_traces(SqlTrackingStore(uri), warehouse)
    return Built(uri, production, evaluations_only, warehouse, SqlAlchemyStore(uri, str(folder / "artifacts")))


def _rules(tmp_path: Path, text: str) -> OutcomeRules:
    path = tmp_path / "outcomes.yaml"
    path.write_text(text)
    return load_outcomes(path)


# --- the file ------------------------------------------------------------------------------------------------------


def test_the_shipped_file_is_valid_and_llmops_outcomes_names_another(tmp_path: Path, monkeypatch):
    shipped = load_outcomes(settings.DEFAULT_OUTCOMES_FILE)
    assert shipped.min_support == 3 and shipped.status == ["ERROR"] and shipped.assessments["relevance"].below == 0.5
    other = tmp_path / "mine.yaml"
    other.write_text("min_support: 7\n")
    monkeypatch.setenv(settings.LLMOPS_OUTCOMES, str(other))
    assert outcomes_path() == other and load_outcomes().min_support == 7
    monkeypatch.delenv(settings.LLMOPS_OUTCOMES)
    assert outcomes_path() == settings.DEFAULT_OUTCOMES_FILE


@pytest.mark.parametrize("text, problem", [
    ("min_support: 3\nthresholds: {relevance: 0.5}\n", ":2: thresholds: Extra inputs are not permitted"),
    ("status: [ERROR, BROKEN]\n", ":1: status.1: Input should be 'ERROR', 'OK' or 'IN_PROGRESS'"),
    ("min_support: 0\n", ":1: min_support: Input should be greater than or equal to 1"),
    ("assessments:\n  helpfulness:\n    below: lots\n", ":3: assessments.helpfulness.below: Input should be a valid number"),
    ("assessments:\n  relevance: {below: .nan}\n", ":2: assessments.relevance.below: Input should be a finite number"),
    ("assessments:\n  relevance: {above: yes}\n", ":2: assessments.relevance.above: Input should be a valid number"),
    ("assessments:\n  user_thumbs: {ignore: true}\n  helpfulness:\n    below: 3\n    above: 4\n",
     ":4: assessments.helpfulness: Value error, give exactly one of bad, below, above and ignore, not ['below', 'above']"),
    ("assessments:\n  tone: {bad: []}\n", ":2: assessments.tone: Value error, bad: give at least one value"),
    ("assessments:\n  tone: {bad: {curt: 1}}\n", ":2: assessments.tone.bad"),
    ("assessments:\n  tone: {bad: [curt}\nstatus: [ERROR]\n", ":2: invalid YAML"),
    ("- ERROR\n", ":1: must be a mapping"),
])
def test_problems_name_the_file_and_line(tmp_path: Path, text: str, problem: str):
    with pytest.raises(OutcomesFileError) as error:
        _rules(tmp_path, text)
    assert f"{tmp_path / 'outcomes.yaml'}{problem}" in str(error.value), str(error.value)


def test_a_missing_file_is_named(tmp_path: Path):
    with pytest.raises(OutcomesFileError, match=f"{tmp_path / 'none.yaml'}:0: outcomes file not found"):
        load_outcomes(tmp_path / "none.yaml")


# --- which outcomes --------------------------------------------------------------------------------------------------


def _outcomes(built: Built, rules: OutcomeRules) -> dict[str, dict]:
    with sqlalchemy_engine(built.warehouse).connect() as conn:
        found = outcomes(conn, Population(experiment_ids=[built.production]), rules)
        selected = {phrase(d): _selected(conn, built.production, d) for d in found}
    return {phrase(d): {"dimension": d, "traces": selected[phrase(d)]} for d in found}


def _selected(conn: sa.Connection, experiment_id: str, dimension: Dimension, include_evaluations: bool = False) -> set:
    query = Population(experiment_ids=[experiment_id], include_evaluations=include_evaluations)
    return set(conn.execute(sa.select(TRACES.c.trace_id).where(
        *population(query), TRACES.c.trace_key.in_(trace_keys(dimension)))).scalars())


def _production(filter_string: str) -> str:
    return f"{filter_string} AND {EXCLUDE_EVAL_RUN_TRACES_FILTER}"


def test_undeclared_feedback_follows_mlflows_conventions(built: Built):
    """false of boolean feedback and no of a yes/no judge are bad; a numeric score is no outcome without a threshold
    (no more "below 0.5 on any scale"); other string feedback neither. Production traces only, as MLflow counts."""
    found = _outcomes(built, OutcomeRules())
    assert set(found) == {"status is ERROR", "user_thumbs is false", "correctness is no", "is_toxic is false"}
    for outcome in found.values():
        theirs = built.search(_production(mlflow_filter_string(outcome["dimension"])))
        assert outcome["traces"] == theirs and theirs, outcome["dimension"]
    assert len(found["status is ERROR"]["traces"]) == 3  # the evaluation run's failed trace is left out


def test_declared_outcomes_replace_the_conventions(built: Built, tmp_path: Path):
    rules = _rules(tmp_path, """\
status: [ERROR]
assessments:
  helpfulness: {below: 3}     # a 1-5 scale
  relevance: {above: 0.5}     # higher is worse here
  is_toxic: {bad: true}
  user_thumbs: {ignore: true}
  correctness: {bad: no}      # unquoted: YAML reads false, which stands for the answer no
  tone: {bad: [curt]}
  not_logged: {bad: true}
""")
    found = _outcomes(built, rules)
    assert set(found) == {"status is ERROR", "helpfulness < 3", "relevance > 0.5", "is_toxic is true",
                          "correctness is no", "tone is curt"}
    for outcome in found.values():
        theirs = built.search(_production(mlflow_filter_string(outcome["dimension"])))
        assert outcome["traces"] == theirs and theirs, outcome["dimension"]
    assert len(found["helpfulness < 3"]["traces"]) == 5  # the errored judge run is no value


# --- root causes -----------------------------------------------------------------------------------------------------


def test_root_causes_are_positive_supported_and_in_plain_words(built: Built, tmp_path: Path):
    rules = _rules(tmp_path, "min_support: 3\nassessments:\n  helpfulness: {below: 3}\n")
    with sqlalchemy_engine(built.warehouse, read_only=False).begin() as conn:
        rows = write_root_causes(conn, rules)
    assert rows and all(r["npmi"] > 0 and r["intersection_count"] >= 3 for r in rows)
    assert {r["experiment_id"] for r in rows} == {built.production}  # the evaluation-only experiment has none
    by = {(r["outcome_description"], r["description"]): r for r in rows}
    top = by[("user_thumbs is false", "tool search failed")]
    assert top["mlflow_filter"] == "span.type = 'TOOL' AND span.name = 'search' AND span.status = 'ERROR'"
    first = {r["description"] for r in rows if r["outcome_description"] == "status is ERROR" and r["rank"] <= 2}
    assert first == {"tool db.write failed", "a span failed with KeyError"}  # always together with it: NPMI 1
    assert ("helpfulness < 3", "a span failed with ValueError") in by
    production = built.search(EXCLUDE_EVAL_RUN_TRACES_FILTER)
    for row in rows:
        outcome = Dimension(name=row["outcome"], parameters=json.loads(row["outcome_parameters"]))
        cause = Dimension(name=row["dimension"], parameters=json.loads(row["parameters"]))
        assert (row["outcome_description"], row["outcome_filter"]) == (phrase(outcome), mlflow_filter_string(outcome))
        assert (row["description"], row["mlflow_filter"]) == (phrase(cause), mlflow_filter_string(cause))
        if row["mlflow_filter"] is None:
            continue
        with_outcome, with_cause = (built.search(_production(row["outcome_filter"])),
                                    built.search(_production(row["mlflow_filter"])))
        assert (row["total_count"], row["outcome_count"], row["count"], row["intersection_count"]) == (
            len(production), len(with_outcome), len(with_cause), len(with_outcome & with_cause)), row


def test_evaluation_traces_count_only_when_asked_for(built: Built):
    error = Dimension(name="status", parameters={"value": "ERROR"})
    with sqlalchemy_engine(built.warehouse).connect() as conn:
        counted = {flag: correlations(conn, CorrelationsRequest(experiment_ids=[built.production], dimension=error,
                                                                include_evaluations=flag))
                   for flag in (False, True)}
        everything = _selected(conn, built.production, error, include_evaluations=True)
    assert (counted[False].total_count, counted[False].dimension.count) == (
        len(built.search(EXCLUDE_EVAL_RUN_TRACES_FILTER)), len(built.search(_production("attributes.status = 'ERROR'"))))
    assert (counted[True].total_count, counted[True].dimension.count) == (
        len(built.search("trace.timestamp_ms > 0")), len(built.search("attributes.status = 'ERROR'"))) == (19, 4)
    assert everything == built.search("attributes.status = 'ERROR'")
    with sqlalchemy_engine(built.warehouse, read_only=False).begin() as conn:
        write_rollups(conn)
        with_evaluations = write_root_causes(conn, OutcomeRules(min_support=1), include_evaluations=True)
        production_only = write_root_causes(conn, OutcomeRules(min_support=1))
    assert built.evaluations_only in {r["experiment_id"] for r in with_evaluations}
    assert built.evaluations_only not in {r["experiment_id"] for r in production_only}


def test_npmi_counts_what_each_dimension_selects_among_the_counted_traces(built: Built):
    """calculate-npmi counts (bitmaps over the trace keys) are the traces each selector selects among those the query
    counts: over ranges cut between traces, with and without the evaluation runs' traces, in both experiments."""
    dimensions = [Dimension(name="status", parameters={"value": "ERROR"}),
                  Dimension(name="assessment.user_thumbs", parameters={"value": False}),
                  Dimension(name="assessment.short", parameters={"value": True}),  # the evaluation's scorer
                  Dimension(name="tools.search", parameters={"value": "error"}),
                  Dimension(name="tools.db.write", parameters={"value": "success"})]
    with sqlalchemy_engine(built.warehouse).connect() as conn:
        times = sorted(conn.execute(sa.select(TRACES.c.timestamp_ms).where(
            TRACES.c.experiment_id == built.production)).scalars())
        ranges = [{}, {"start_time": times[3], "end_time": times[-4]}, {"start_time": times[-4] + 1}]
        checked = set()
        for experiment_id in (built.production, built.evaluations_only):
            for time_range in ranges:
                for evaluations in (False, True):
                    query = Population(experiment_ids=[experiment_id], include_evaluations=evaluations, **time_range)
                    counted = set(conn.execute(sa.select(TRACES.c.trace_key).where(*population(query))).scalars())
                    selected = [counted & set(conn.execute(trace_keys(d)).scalars()) for d in dimensions]
                    for (first, first_keys), (second, second_keys) in itertools.combinations(
                            zip(dimensions, selected), 2):
                        result = calculate_npmi(conn, query, first, second)
                        assert (result.total_count, result.dimension1_count, result.dimension2_count,
                                result.joint_count) == (len(counted), len(first_keys), len(second_keys),
                                                        len(first_keys & second_keys)), (query, first, second)
                        checked.add((len(counted), len(first_keys & second_keys)))
    assert len(checked) > 10  # populations and overlaps of many sizes, none of them all or nothing everywhere


def test_correlations_from_the_facts_leave_out_evaluation_traces_as_the_tables_do(built: Built, tmp_path: Path):
    """The evaluation run's failed trace and its scorer's feedback are in the targets' traces only when evaluations
    are asked for: correlations read from the dimension facts and hourly counts (whole hours: only the targets'
    traces joined to the facts) answer as those read from the child tables, with and without evaluations."""
    path = str(shutil.copyfile(built.warehouse, tmp_path / "warehouse.duckdb"))
    targets = [{"name": "status", "parameters": {"value": "ERROR"}},
               {"name": "assessment.short", "parameters": {"value": True}},
               {"name": "tools.search", "parameters": {"value": "error"}}]
    experiments = [built.production, built.evaluations_only]
    from_child_tables = insights_answers(path, experiments, targets)
    refreshed(path)
    assert insights_answers(path, experiments, targets) == from_child_tables


def test_the_root_causes_asset_reads_the_outcomes_file(built: Built, tmp_path: Path):
    import dagster as dg

    from assets.insights.assets import root_causes
    from resources.warehouse import WarehouseResource

    copy = str(tmp_path / "warehouse.duckdb")
    shutil.copyfile(built.warehouse, copy)
    file = tmp_path / "outcomes.yaml"
    file.write_text("min_support: 4\nstatus: []\nassessments:\n  user_thumbs: {ignore: true}\n  is_toxic: {ignore: true}\n")
    with dg.instance_for_test() as instance:
        result = dg.materialize([root_causes], resources={"warehouse": WarehouseResource(path=copy)}, instance=instance,
                                run_config={"ops": {"root_causes": {"config": {"outcomes_file": str(file)}}}})
    assert result.success
    with sqlalchemy_engine(copy).connect() as conn:
        rows = conn.execute(sa.text("SELECT outcome_description, intersection_count FROM root_causes")).all()
    assert rows and {outcome for outcome, _ in rows} == {"correctness is no"} and min(n for _, n in rows) >= 4
    metadata = result.asset_materializations_for_node("root_causes")[0].metadata
    assert metadata["outcomes_file"].value == str(file) and metadata["min_support"].value == 4
    assert os.environ.get(settings.LLMOPS_OUTCOMES) != str(file)  # the run config, not the environment


# --- traces as real agents write them ------------------------------------------------------------------------------


def test_outcomes_and_causes_on_autologged_traces(autologged_store: AutologgedStore,  # noqa: F811 - the fixtures
                                                  autologged_warehouse: str, tmp_path: Path):  # noqa: F811
    """OpenAI and LangGraph autologging, built-in judges in mlflow.genai.evaluate, feedback on a session: the
    judges' no and the failed tool are found, the evaluation experiment counts only when asked for."""
    store = autologged_store
    mlflow_store = SqlAlchemyStore(store.uri, str(tmp_path / "artifacts"))
    found = {}
    with sqlalchemy_engine(autologged_warehouse).connect() as conn:
        for experiment_id, flag in ((store.experiment_id, False), (store.eval_experiment_id, False),
                                    (store.eval_experiment_id, True)):
            query = Population(experiment_ids=[experiment_id], include_evaluations=flag)
            found[experiment_id, flag] = {phrase(d): _selected(conn, experiment_id, d, flag)
                                          for d in outcomes(conn, query, OutcomeRules())}
            for outcome in outcomes(conn, query, OutcomeRules()):
                mlflow_filter = mlflow_filter_string(outcome)
                traces, _ = mlflow_store.search_traces(
                    [experiment_id], filter_string=mlflow_filter if flag else _production(mlflow_filter), max_results=100)
                assert found[experiment_id, flag][phrase(outcome)] == {t.trace_id for t in traces}, outcome
    # relevance is a 0-1 score with no declared threshold: no outcome
    assert set(found[store.experiment_id, False]) == {"status is ERROR", "user_thumbs is false",
                                                      "session_resolved is false"}
    assert found[store.eval_experiment_id, False] == {}  # only evaluation traces there
    assert {"relevance_to_query is no", "safety is no"} <= set(found[store.eval_experiment_id, True])  # built-in judges
    with sqlalchemy_engine(autologged_warehouse).connect() as conn:
        error = Dimension(name="status", parameters={"value": "ERROR"})
        ranked = correlations(conn, CorrelationsRequest(experiment_ids=[store.experiment_id], dimension=error))
    causes = {c.description: c for c in ranked.data}
    assert {"tool status_page failed", "a span failed with ConnectionError"} <= set(causes)
    for cause in causes.values():
        if cause.mlflow_filter:
            assert cause.count == len(mlflow_store.search_traces([store.experiment_id],
                                                                 filter_string=cause.mlflow_filter)[0]), cause
