"""Run an eval suite on the demo agent with given prompt versions, log it to MLflow, and decide the gate.

One evaluation = one MLflow run made by `mlflow.genai.evaluate` (a trace per example, an assessment per
scorer) plus the seed's summary metrics: `overall_pass_rate` (share of examples that pass every scorer that
applies to them), `total_examples`, `passed_examples`, `failed_examples`. Tags name the suite, the role
(`candidate` or `production`), each prompt version (`llmops.prompt.<name>`) and the dataset digest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import mlflow

from assets.evals.dataset import EvalSuite
from assets.vocabulary import DIGEST_TAG, EXAMPLE_ID_TAG, PASS_RATE_METRIC, PROMPT_TAG_PREFIX, ROLE_TAG, SUITE_TAG
from resources.agent.backends import LLMBackend
from resources.agent.demo_agent import DemoAgent
from resources.agent.prompts import AgentPrompts


@dataclass
class ScorerResult:
    example_id: str
    scorer: str
    passed: bool | None  # None: the scorer does not apply to this example
    rationale: str | None
    error: str | None
    trace_id: str


@dataclass
class EvalOutcome:
    suite: str
    role: str
    run_id: str
    prompt_versions: dict[str, int]
    dataset_digest: str
    examples: int
    passed_examples: int
    overall_pass_rate: float
    scorer_pass_rates: dict[str, float]
    results: list[ScorerResult] = field(default_factory=list)

    def failures(self) -> list[ScorerResult]:
        return [r for r in self.results if r.passed is False]


def predict_fn(prompts: AgentPrompts, backend: LLMBackend) -> Callable[..., dict]:
    """The demo agent as `predict_fn`; tool outcomes are seeded by the question, so every prompt version
    under test meets the same tool failures."""
    agent = DemoAgent(backend, prompts)

    def predict(question: str, tools: list[str] | None = None) -> dict:
        run = agent.run(question, tuple(tools or ()), random.Random(question))
        return {"answer": run.answer, "sources": list(run.steps[0].outputs), "failed": run.failed}

    return predict


def _cell(row, column: str):
    value = row.get(column)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarize(table, scorer_names: list[str]) -> tuple[list[ScorerResult], int, dict[str, float]]:
    """Per-example scorer results from evaluate's `eval_results` table: (results, passed examples, rates)."""
    results, passed_examples = [], 0
    for _, row in table.iterrows():
        example_id = (row.get("tags") or {}).get(EXAMPLE_ID_TAG, row["trace_id"])
        verdicts = []
        for name in scorer_names:
            value, error = _cell(row, f"{name}/value"), _cell(row, f"{name}/error_message")
            passed = None if value is None and error is None else bool(value) and error is None
            verdicts.append(passed)
            results.append(ScorerResult(example_id, name, passed, _cell(row, f"{name}/rationale"), error, row["trace_id"]))
        passed_examples += all(v is not False for v in verdicts)
    rates = {}
    for name in scorer_names:
        applied = [r.passed for r in results if r.scorer == name and r.passed is not None]
        if applied:
            rates[name] = sum(applied) / len(applied)
    return results, passed_examples, rates


def run_suite(suite: EvalSuite, dataset, prompts: AgentPrompts, backend: LLMBackend, scorers: list, *,
              role: str, experiment_id: str, tags: dict[str, str]) -> EvalOutcome:
    """Evaluate the agent with `prompts` (at alias `role`) on `dataset` (the suite registered in MLflow) in a new
    run; `tags` may carry a note (NOTE_TAG), e.g. that LLM judges were skipped."""
    run_tags = {**tags, ROLE_TAG: role, SUITE_TAG: suite.name, DIGEST_TAG: suite.digest(),
                **{PROMPT_TAG_PREFIX + name: str(v) for name, v in prompts.versions.items()}}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{suite.name}-{role}", tags=run_tags) as run:
        mlflow.log_params({"dataset_name": suite.name, "num_examples": len(suite.examples),
                           **{f"prompt.{name}": v for name, v in prompts.versions.items()}})
        result = mlflow.genai.evaluate(data=dataset, scorers=scorers, predict_fn=predict_fn(prompts, backend))
        results, passed, rates = summarize(result.tables["eval_results"], [s.name for s in scorers])
        examples = len(suite.examples)
        outcome = EvalOutcome(suite.name, role, run.info.run_id, dict(prompts.versions), suite.digest(), examples,
                              passed, passed / examples, rates, results)
        mlflow.log_metrics({PASS_RATE_METRIC: outcome.overall_pass_rate, "total_examples": examples,
                            "passed_examples": passed, "failed_examples": examples - passed})
        mlflow.log_dict(asdict(outcome), "eval_results.json")
    return outcome


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]


def decide(candidates: list[EvalOutcome], baselines: dict[str, EvalOutcome], threshold: float,
           tolerance: float) -> GateDecision:
    """Pass when every suite's candidate pass rate is at least `threshold` and not below the production
    version's rate on the same suite minus `tolerance`."""
    reasons, failed = [], False
    for outcome in candidates:
        rate, baseline = outcome.overall_pass_rate, baselines.get(outcome.suite)
        problems = []
        if rate < threshold:
            problems.append(f"pass rate {rate:.3f} is below the threshold {threshold:.3f}")
        if baseline is not None and rate < baseline.overall_pass_rate - tolerance:
            problems.append(f"pass rate {rate:.3f} is below production's {baseline.overall_pass_rate:.3f} "
                            f"minus the tolerance {tolerance:.3f}")
        if problems:
            failed = True
            reasons += [f"{outcome.suite}: {problem}" for problem in problems]
        else:
            production = f"production {baseline.overall_pass_rate:.3f}" if baseline else "no production version yet"
            reasons.append(f"{outcome.suite}: pass rate {rate:.3f} >= {threshold:.3f}, {production}")
    return GateDecision(bool(candidates) and not failed, reasons)

