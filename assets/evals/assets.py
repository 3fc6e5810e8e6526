"""Group `evals`: the demo agent evaluated with its `candidate` prompts (and, as the baseline, its `production`
prompts) on every eval suite, logged to MLflow and the warehouse, gated by a blocking check."""

import os
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from assets.failures import run_failures
from assets.prompts.assets import AGENT_PROMPTS
from assets.prompts.registry import prompt_state
from assets.traces.quality import markdown_table
from assets.vocabulary import (
    BASELINE_METRIC,
    CANDIDATE,
    DAGSTER_RUN_TAG,
    GATE_FAILED,
    GATE_PASSED,
    GATE_TAG,
    NOTE,
    NOTE_TAG,
    PRODUCTION,
)
from resources.agent.backends import backend_from_env
from resources.agent.prompts import AgentPrompts
from resources.mlflow import MlflowResource
from resources.settings import (
    DEFAULT_EVAL_PASS_THRESHOLD,
    DEFAULT_EVAL_TOLERANCE,
    LLMOPS_EVAL_PASS_THRESHOLD,
    LLMOPS_EVAL_TOLERANCE,
    LLMOPS_JUDGE_ENDPOINT,
    env_float,
)
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource

if TYPE_CHECKING:  # the evaluation code loads MLflow's genai stack and the agent: imported by the step itself
    from assets.evals.runner import EvalOutcome

GATE_CHECK = "eval_gate"


class EvalConfig(dg.Config):
    # None: the environment's value, read when the step runs (not when the definitions are imported)
    pass_threshold: float | None = Field(
        default=None, ge=0, le=1,
        description="Least overall pass rate of the candidate on every suite; default $LLMOPS_EVAL_PASS_THRESHOLD.")
    tolerance: float | None = Field(
        default=None, ge=0, le=1,
        description="How far below production's pass rate the candidate may be; default $LLMOPS_EVAL_TOLERANCE.")

    def gate(self) -> tuple[float, float]:
        """The pass threshold and tolerance in force."""
        threshold = env_float(LLMOPS_EVAL_PASS_THRESHOLD, DEFAULT_EVAL_PASS_THRESHOLD)
        tolerance = env_float(LLMOPS_EVAL_TOLERANCE, DEFAULT_EVAL_TOLERANCE)
        return (threshold if self.pass_threshold is None else self.pass_threshold,
                tolerance if self.tolerance is None else self.tolerance)
    judge_endpoint: str | None = Field(
        default=None, description=f"Databricks serving endpoint for LLM-judge scorers; default ${LLMOPS_JUDGE_ENDPOINT}.")


def baseline_prompts(client, candidate: AgentPrompts) -> AgentPrompts | None:
    """The agent's production prompts (a prompt never promoted counts at its candidate), or None when that is
    exactly the candidate set, so there is nothing to compare with."""
    productions = {name: prompt_state(client, name).alias(PRODUCTION) for name in AGENT_PROMPTS}
    if all(v is None for v in productions.values()):
        return None
    overrides = {name: CANDIDATE for name, v in productions.items() if v is None}
    baseline = AgentPrompts.from_registry(client, PRODUCTION, overrides)
    return None if baseline.versions == candidate.versions else baseline


def _failures_md(candidates: "list[EvalOutcome]") -> str:
    rows = [(o.suite, f.example_id, f.scorer, (f.error or f.rationale or "")[:120]) for o in candidates for f in o.failures()]
    return markdown_table(["suite", "example", "scorer", "why"], rows[:50]) if rows else "No scorer failed."


@dg.asset(
    group_name="evals", owners=["team:llmops-platform"], deps=["prompt_registry"], kinds={"mlflow", "duckdb"},
    pool="duckdb_write",
    check_specs=[dg.AssetCheckSpec(
        GATE_CHECK, asset="prompt_evals", blocking=True,
        description="The candidate prompts' overall pass rate is at least the threshold on every suite and not below "
        "production's minus the tolerance; when it fails, promotion does not run.")],
    description="The demo agent evaluated with mlflow.genai.evaluate on each eval suite (evals/*.yaml, registered as "
    "MLflow evaluation datasets) with its `candidate` prompts and, as the baseline, its `production` prompts; "
    "per-scorer and overall pass rates in MLflow and in the warehouse tables eval_runs and eval_results.",
)
def prompt_evals(context: dg.AssetExecutionContext, config: EvalConfig, mlflow: MlflowResource,
                 warehouse: WarehouseResource, user_files: UserFilesResource):
    from assets.evals.dataset import EvalFileError, load_eval_suites, register_dataset
    from assets.evals.results import write_eval_results
    from assets.evals.runner import decide, run_suite
    from assets.evals.scorers import CODE_SCORERS, judge_scorers

    try:
        suites = load_eval_suites(user_files.evals)
    except EvalFileError as exc:
        raise dg.Failure(description=str(exc)) from None
    client = mlflow.client()
    judges, note = judge_scorers(config.judge_endpoint or os.environ.get(LLMOPS_JUDGE_ENDPOINT))
    if note:
        context.log.info(note)
    scorers, backend = [*CODE_SCORERS, *judges], backend_from_env()
    with run_failures(mlflow):
        candidate = AgentPrompts.from_registry(client, CANDIDATE)
        baseline = baseline_prompts(client, candidate)
        mlflow.make_current()
        experiment_id = mlflow.experiment_id(mlflow.eval_experiment)
        tags = {DAGSTER_RUN_TAG: context.run_id} | ({NOTE_TAG: note} if note else {})
        candidates, baselines = [], {}
        for loaded in suites:
            dataset = register_dataset(loaded.suite, experiment_id)
            context.log.info(f"{loaded.suite.name}: evaluating candidate prompts {candidate.versions}")
            candidates.append(run_suite(loaded.suite, dataset, candidate, backend, scorers, role=CANDIDATE,
                                      experiment_id=experiment_id, tags=tags))
            if baseline is not None:
                context.log.info(f"{loaded.suite.name}: evaluating production prompts {baseline.versions}")
                baselines[loaded.suite.name] = run_suite(loaded.suite, dataset, baseline, backend, scorers,
                                                         role=PRODUCTION, experiment_id=experiment_id, tags=tags)
        threshold, tolerance = config.gate()
        decision = decide(candidates, baselines, threshold, tolerance)
        verdict = GATE_PASSED if decision.passed else GATE_FAILED
        for outcome in candidates:
            client.set_tag(outcome.run_id, GATE_TAG, verdict)
            if outcome.suite in baselines:
                client.log_metric(outcome.run_id, BASELINE_METRIC, baselines[outcome.suite].overall_pass_rate)
    every = candidates + list(baselines.values())
    with warehouse.migrated() as con:
        written = write_eval_results(con, every, {o.run_id: verdict for o in candidates}, context.run_id)
    summary = [(o.suite, o.role, ", ".join(f"{n} v{v}" for n, v in sorted(o.prompt_versions.items())),
                f"{o.passed_examples}/{o.examples}", f"{o.overall_pass_rate:.3f}",
                ", ".join(f"{n} {r:.2f}" for n, r in o.scorer_pass_rates.items()), o.run_id) for o in every]
    yield dg.MaterializeResult(metadata={
        "candidate_versions": dg.MetadataValue.json(candidate.versions),
        "pass_rates": dg.MetadataValue.md(markdown_table(
            ["suite", "role", "prompts", "passed", "overall", "per scorer", "MLflow run"], summary)),
        "failures": dg.MetadataValue.md(_failures_md(candidates)),
        "eval_result_rows": dg.MetadataValue.int(written),
        NOTE: note or "LLM-judge scorers ran",
    })
    yield dg.AssetCheckResult(
        check_name=GATE_CHECK, passed=decision.passed,
        description="; ".join(decision.reasons),
        metadata={"threshold": threshold, "tolerance": tolerance,
                  "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
                  "failures": dg.MetadataValue.md(_failures_md(candidates))},
    )
