"""Evaluation, the blocking gate, promotion with evidence and rollback, on a real MLflow store, a real DuckDB
file and a real Dagster instance; the prompt-file sensor; the scorers and the gate rule."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from mlflow import MlflowClient

from assets.evals.dataset import EvalFileError, load_eval_suites
from assets.evals.runner import EvalOutcome, decide
from assets.evals.scorers import cites_source, formatting, judge_scorers, required_prefix, sentence_count
from assets.prompts.files import folder_digest
from assets.prompts.registry import prompt_state
from assets.vocabulary import (
    CANDIDATE,
    EVAL_RUN_TAG,
    NOTE,
    NOTE_TAG,
    PASS_RATE_TAG,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    PROMOTED_BY,
    PROMPT_TAG_PREFIX,
    ROLLED_BACK_AT,
)
from orchestration.definitions import build_definitions
from orchestration.sensors import build_sensors
from resources.mlflow import MlflowResource
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource
from tests.conftest import PROJECT_DIR, edit

defs = build_definitions()
prompt_files_sensor = {s.name: s for s in build_sensors(True)}["prompt_files_sensor"]


@pytest.fixture
def project(empty_store: Path, tmp_path: Path) -> dict:
    """Copies of the prompt files and eval suites, an empty MLflow store and a warehouse path, as resources."""
    store = empty_store
    for folder in ("prompts", "evals"):
        shutil.copytree(PROJECT_DIR / folder, tmp_path / folder)
    return {
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{store}", eval_experiment="evals-under-test"),
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
        "user_files": UserFilesResource(prompts_dir=str(tmp_path / "prompts"), evals_dir=str(tmp_path / "evals")),
    }


def run_job(name: str, resources: dict, instance) -> dg.ExecuteInProcessResult:
    """The job as defined, bound to the test's resources: execute_in_process(resources=...) does not replace the
    resources of a job with run config (prompt_rollback), which would then run on the environment's stores."""
    bound = dg.Definitions(assets=defs.assets, jobs=defs.jobs, resources={**defs.resources, **resources})
    job = bound.resolve_job_def(name)
    return job.execute_in_process(instance=instance, raise_on_error=False)


def production(client: MlflowClient) -> dict[str, int]:
    return {name: int(client.get_prompt_version_by_alias(name, PRODUCTION).version)
            for name in ("support_system", "support_answer")}


def test_release_gates_promotes_with_evidence_and_rolls_back(project: dict):
    client = project["mlflow"].client()
    prompts = Path(project["user_files"].prompts_dir) / "support_system.yaml"
    with dg.instance_for_test() as instance:
        # 1. first release: every prompt is new, the evaluation passes, production follows the candidates
        first = run_job("prompt_release", project, instance)
        assert first.success
        (gate,) = first.get_asset_check_evaluations()
        assert gate.passed and "0.900 >= 0.800" in gate.description
        assert production(client) == {"support_system": 1, "support_answer": 1}
        evidence = client.get_prompt_version("support_system", 1).tags
        eval_run = client.get_run(evidence[EVAL_RUN_TAG])
        assert eval_run.data.metrics["overall_pass_rate"] == 0.9
        assert evidence[PASS_RATE_TAG] == "support_agent_eval=0.9000"
        assert evidence[PROMOTED_BY] == f"dagster run {first.run_id}"
        assert eval_run.data.tags[NOTE_TAG].startswith("LLM-judge scorers skipped")
        assert eval_run.data.metrics["sentence_count/mean"] == 0.9 and eval_run.data.params["prompt.support_system"] == "1"
        history = first.asset_materializations_for_node("prompt_registry")[0].metadata["history_support_system"].value
        assert "| 1 | candidate |" in history

        # 2. a candidate that drops the sentence limit fails the gate: production stays, failures are named
        edit(prompts, "Answer in at most three sentences,", "Answer in detail,")
        failing = run_job("prompt_release", project, instance)
        (gate,) = failing.get_asset_check_evaluations()
        assert not gate.passed and "below the threshold 0.800" in gate.description
        assert "| sentence_count |" in gate.metadata["failures"].value
        assert not failing.asset_materializations_for_node("prompt_production")  # blocked by the gate
        assert production(client) == {"support_system": 1, "support_answer": 1}
        assert client.get_prompt_version_by_alias("support_system", CANDIDATE).version == 2
        history = failing.asset_materializations_for_node("prompt_registry")[0].metadata["history_support_system"].value
        assert "| 2 | candidate |" in history and "| 1 | production |" in history

        # 3. a passing edit is promoted, recording what it replaced and the eval that justified it
        edit(prompts, "Answer in detail,", "Answer in at most two sentences,")
        passing = run_job("prompt_release", project, instance)
        assert passing.success and passing.get_asset_check_evaluations()[0].passed
        assert production(client) == {"support_system": 3, "support_answer": 1}
        tags = client.get_prompt_version("support_system", 3).tags
        assert tags[PREVIOUS_PRODUCTION] == "1" and tags[PROMOTED_BY] == f"dagster run {passing.run_id}"
        assert client.get_run(tags[EVAL_RUN_TAG]).data.tags[PROMPT_TAG_PREFIX + "support_system"] == "3"

        # 4. rollback restores the version the last promotion replaced, and that version is not re-promoted
        rolled = run_job("prompt_rollback", project, instance)
        assert rolled.success
        assert production(client) == {"support_system": 1, "support_answer": 1}
        assert ROLLED_BACK_AT in client.get_prompt_version("support_system", 3).tags
        again = run_job("prompt_release", project, instance)
        assert again.success and production(client)["support_system"] == 1
        metadata = again.asset_materializations_for_node("prompt_production")[0].metadata
        assert "was rolled back" in metadata[PRODUCTION].value
        assert metadata[NOTE].value.startswith("Not promoted: support_system v3 was rolled back")

    with duckdb.connect(project["warehouse"].path, read_only=True) as con:
        runs = con.sql("SELECT role, gate, overall_pass_rate, prompt_versions FROM eval_runs ORDER BY evaluated_at, role").fetchall()
        scored = con.sql("SELECT count(*), count(DISTINCT eval_run_id) FROM eval_results").fetchone()
    assert [(role, gate) for role, gate, *_ in runs] == [
        ("candidate", "passed"),
        ("candidate", "failed"), ("production", None),
        ("candidate", "passed"), ("production", None),
        ("candidate", "passed"), ("production", None),
    ]
    assert json.loads(runs[1][3]) == {"support_system": 2, "support_answer": 1} and runs[1][2] < 0.8
    assert scored == (7 * 10 * 5, 7)  # every example x every code scorer of every evaluation


def test_suite_is_an_mlflow_dataset_holding_exactly_the_files_examples(project: dict):
    from mlflow.genai.datasets import search_datasets

    evals = Path(project["user_files"].evals_dir) / "support_agent.yaml"
    with dg.instance_for_test() as instance:
        dg.materialize([defs.get_assets_def("prompt_registry"), defs.get_assets_def("prompt_evals")],
                       resources=project, instance=instance)
        edit(evals, "  - id: billing\n    inputs: {question: \"Is billing monthly per seat?\"}\n"
             "    expectations: {expected_source: kb-105, max_sentences: 3}\n    tags: {persona: new_user}\n", "")
        second = dg.materialize([defs.get_assets_def("prompt_evals")], resources=project, instance=instance)
    experiment = project["mlflow"].client().get_experiment_by_name("evals-under-test")
    (dataset,) = search_datasets(experiment_ids=[experiment.experiment_id], filter_string="name = 'support_agent_eval'")
    records = dataset.to_df()
    assert len(records) == 9 and "billing" not in {tags["example_id"] for tags in records["tags"]}
    assert "| 8/9 |" in second.asset_materializations_for_node("prompt_evals")[0].metadata["pass_rates"].value


def test_promotion_needs_a_passing_evaluation(project: dict):
    with dg.instance_for_test() as instance:
        dg.materialize([defs.get_assets_def("prompt_registry")], resources=project, instance=instance)
        result = dg.materialize([defs.get_assets_def("prompt_production")], resources=project, instance=instance,
                                raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "No evaluation passed the gate for the candidate versions" in message


def aliases(client: MlflowClient) -> dict[str, dict[str, int]]:
    return {name: prompt_state(client, name).aliases for name in ("support_system", "support_answer")}


def rollback_outcome(result: dg.ExecuteInProcessResult, instance) -> tuple[str, int, list]:
    """The rollback's note, how many prompts it changed, and the run's INFO log messages."""
    metadata = result.asset_materializations_for_node("prompt_production")[0].metadata
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.INFO]
    return metadata[NOTE].value, metadata["changed"].value, logs


def test_rollback_with_nothing_promoted_succeeds_with_a_note(project: dict):
    client = project["mlflow"].client()
    with dg.instance_for_test() as instance:
        dg.materialize([defs.get_assets_def("prompt_registry")], resources=project, instance=instance)
        before = aliases(client)
        result = run_job("prompt_rollback", project, instance)
        assert result.success
        note, changed, logs = rollback_outcome(result, instance)
    assert note == "Nothing to roll back: no promoted production version of ['support_system', 'support_answer']"
    assert changed == 0 and note in logs
    assert aliases(client) == before == {"support_system": {CANDIDATE: 1}, "support_answer": {CANDIDATE: 1}}


def test_rolling_back_the_first_promotion_has_nothing_to_return_to(project: dict):
    client = project["mlflow"].client()
    with dg.instance_for_test() as instance:
        assert run_job("prompt_release", project, instance).success
        before = aliases(client)
        result = run_job("prompt_rollback", project, instance)
        assert result.success
        note, changed, logs = rollback_outcome(result, instance)
    assert note == ("Nothing to roll back: the last promotion (support_system v1, support_answer v1) replaced no "
                    "earlier production version")
    assert changed == 0 and note in logs
    assert aliases(client) == before and production(client) == {"support_system": 1, "support_answer": 1}
    assert ROLLED_BACK_AT not in client.get_prompt_version("support_system", 1).tags


def prompt_tick(project: dict, instance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"user_files": project["user_files"]})
    return prompt_files_sensor.evaluate_tick(context)


def test_sensor_requests_one_release_per_change(project: dict):
    prompts = Path(project["user_files"].prompts_dir)
    with dg.instance_for_test() as instance:
        first = prompt_tick(project, instance, None)  # files never released: a change
        assert len(first.run_requests) == 1 and prompt_files_sensor.job_name == "prompt_release"
        unchanged = prompt_tick(project, instance, first.cursor)
        assert not unchanged.run_requests and unchanged.cursor == first.cursor
        original = (prompts / "support_answer.yaml").read_text()
        edit(prompts / "support_answer.yaml", "Tools:", "Tool results:")
        changed = prompt_tick(project, instance, first.cursor)
        (prompts / "support_answer.yaml").write_text(original)
        reverted = prompt_tick(project, instance, changed.cursor)
    keys = [r.run_requests[0].run_key for r in (first, changed, reverted)]
    assert len(set(keys)) == 3, keys  # going back to earlier content is a change too, with a new run key
    assert keys[0].split("-")[-1] == keys[2].split("-")[-1]  # ... of the same content digest


def test_sensor_first_tick_launches_nothing_for_files_already_released(project: dict):
    prompts = Path(project["user_files"].prompts_dir)
    with dg.instance_for_test() as instance:
        assert run_job("prompt_release", project, instance).success
        first = prompt_tick(project, instance, None)
        assert not first.run_requests and "unchanged" in first.skip_message
        assert json.loads(first.cursor)["digest"] == folder_digest(prompts)
        edit(prompts / "support_answer.yaml", "Tools:", "Tool results:")
        assert len(prompt_tick(project, instance, first.cursor).run_requests) == 1
        assert len(prompt_tick(project, instance, None).run_requests) == 1  # differs from what was released


def test_eval_suite_errors_name_file_and_line(tmp_path: Path):
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "a.yaml").write_text(
        "name: s\nexamples:\n  - id: one\n    inputs: {question: hi, tools: [teleport]}\n"
        "  - id: one\n    inputs: {question: other}\n")
    with pytest.raises(EvalFileError) as caught:
        load_eval_suites(tmp_path / "evals")
    problems = [str(p) for p in caught.value.problems]
    assert any(p.startswith("evals/a.yaml:4: examples.0.inputs: Value error, unknown tools ['teleport']") for p in problems), problems
    with pytest.raises(EvalFileError, match="no eval suites"):
        load_eval_suites(tmp_path / "nothing")


@pytest.mark.parametrize("scorer, outputs, expectations, expected", [
    (sentence_count, {"answer": "One. Two. Three. Source: kb-101."}, {"max_sentences": 3}, True),
    (sentence_count, {"answer": "One. Two. Three. Four."}, {}, False),
    (sentence_count, {"answer": ""}, {}, False),
    (cites_source, {"answer": "Yes. Source: kb-102."}, {"expected_source": "kb-102"}, True),
    (cites_source, {"answer": "Yes. Source: kb-101."}, {"expected_source": "kb-102"}, False),
    (cites_source, {"answer": "Yes."}, {}, False),
    (formatting, {"answer": "Hello {{name}}."}, None, False),
    (formatting, {"answer": "# Title\nText."}, None, False),
    (formatting, {"answer": "Fine answer."}, None, True),
    (required_prefix, {"answer": "Theme: AI. Rest."}, {"required_prefix": "Theme:"}, True),
    (required_prefix, {"answer": "AI. Rest."}, {"required_prefix": "Theme:"}, False),
    (required_prefix, {"answer": "AI."}, {}, None),  # not asked for: skipped, not counted
])
def test_code_scorers(scorer, outputs, expectations, expected):
    args = {"outputs": outputs} if expectations is None else {"outputs": outputs, "expectations": expectations}
    feedback = scorer(**args)
    assert (None if feedback is None else feedback.value) == expected


def test_judges_are_skipped_with_a_note_offline():
    assert judge_scorers(None) == ([], "LLM-judge scorers skipped: no judge endpoint configured (LLMOPS_JUDGE_ENDPOINT)")
    (judge,), note = judge_scorers("my-judge")
    assert note is None and judge.model == "databricks:/my-judge"


def outcome(suite: str, rate: float) -> EvalOutcome:
    return EvalOutcome(suite, "candidate", "run", {}, "digest", 10, round(rate * 10), rate, {})


@pytest.mark.parametrize("candidate, baseline, passed", [
    (0.9, None, True), (0.8, None, True), (0.79, None, False),
    (0.85, 0.9, True),  # within the tolerance of production
    (0.84, 0.9, False),  # more than the tolerance below production
    (0.95, 0.9, True),
])
def test_gate_rule(candidate, baseline, passed):
    baselines = {"s": outcome("s", baseline)} if baseline is not None else {}
    decision = decide([outcome("s", candidate)], baselines, threshold=0.8, tolerance=0.05)
    assert decision.passed is passed, decision.reasons
    assert not decide([], {}, 0.8, 0.05).passed  # no suite evaluated: nothing justifies a promotion
