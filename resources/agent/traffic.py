"""Demo traffic: the demo agent answers questions over the last N days, with feedback and judge scores."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.entities import AssessmentSource, AssessmentSourceType

from resources.agent.backends import backend_from_env
from resources.agent.demo_agent import DemoAgent, question_pool, record_trace
from resources.mlflow import MlflowResource

PERSONAS = ("sme", "new_user", "power_user")
CHANNELS = ("slack", "web", "api")
THUMBS_UP_REASONS = ("Clear and correct", "Solved my problem", "Quick answer")
THUMBS_DOWN_REASONS = ("Wrong numbers", "Did not answer the question", "The tool failed", "Too vague")


@dataclass
class SeedSummary:
    experiment_id: str
    trace_ids: list[str]
    error_traces: int
    feedback: int
    judge_assessments: int


def seed_demo(
    n_traces: int = 300,
    *,
    experiment: str = "llmops-demo",
    days: float = 14.0,
    seed: int = 7,
    now_s: float | None = None,
    on_trace: Callable[[], None] | None = None,
) -> SeedSummary:
    """Write `n_traces` demo traces into the current tracking store (MLFLOW_TRACKING_URI)."""
    if n_traces < 1:
        raise ValueError(f"--traces must be at least 1, not {n_traces}")
    # Feedback is logged right after each trace: the trace must be in the store by then.
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    experiment_id = MlflowResource(tracking_uri=mlflow.get_tracking_uri()).experiment_id(experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    agent = DemoAgent(backend_from_env())
    rng = random.Random(seed)
    pool = question_pool()
    now_ns = int((now_s if now_s is not None else time.time()) * 1e9)
    summary = SeedSummary(experiment_id, [], 0, 0, 0)
    for _ in range(n_traces):
        persona, question, tools = rng.choice(pool)
        run = agent.run(question, tools, rng)
        trace_id = record_trace(
            run,
            start_ns=now_ns - int(rng.uniform(60, days * 86400) * 1e9),
            tags={
                "persona": persona,
                "channel": rng.choice(CHANNELS),
                "environment": "prod" if rng.random() < 0.8 else "staging",
            },
            client_request_id=f"req-{rng.getrandbits(64):016x}",
            metadata={"mlflow.trace.session": f"session-{rng.randint(1, max(1, n_traces // 3))}"},
        )
        summary.trace_ids.append(trace_id)
        summary.error_traces += run.failed
        tool_failed = any(step.error for step in run.steps)
        if rng.random() < 0.4:
            thumbs_up = not run.failed and rng.random() < (0.35 if tool_failed else 0.8)
            mlflow.log_feedback(
                trace_id=trace_id,
                name="user_thumbs",
                value=thumbs_up,
                rationale=rng.choice(THUMBS_UP_REASONS if thumbs_up else THUMBS_DOWN_REASONS),
                source=AssessmentSource(AssessmentSourceType.HUMAN, f"user-{rng.randint(1, 40)}"),
            )
            summary.feedback += 1
        if not run.failed:
            judge = AssessmentSource(AssessmentSourceType.LLM_JUDGE, "demo-judge-v1")
            relevance = round(min(1.0, max(0.0, rng.gauss(0.55 if tool_failed else 0.8, 0.15))), 2)
            mlflow.log_feedback(trace_id=trace_id, name="relevance", value=relevance, source=judge,
                                rationale="Share of the question the answer addresses")
            mlflow.log_feedback(trace_id=trace_id, name="tone", value=rng.choice(("friendly", "neutral", "curt")),
                                source=judge)
            summary.judge_assessments += 2
        if on_trace:
            on_trace()
    mlflow.flush_trace_async_logging()
    return summary
