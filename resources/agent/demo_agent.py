"""The demo support agent: retrieves from a small knowledge base, calls tools, and asks an LLM.

`DemoAgent.run()` does the work and returns the steps it took; `record_trace()` writes those steps
as an MLflow trace (AGENT root, RETRIEVER, TOOL and CHAT_MODEL spans with token usage) at chosen
timestamps, so demo traffic can be spread over past days. Tool latencies and failures are simulated
from a seeded random generator, so a seed reproduces the same traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import SpanStatusCode, SpanType
from mlflow.tracing.trace_manager import InMemoryTraceManager

from resources.agent.backends import LLMBackend
from resources.agent.prompts import PRODUCT, AgentPrompts, render

KNOWLEDGE_BASE = {
    "kb-101": "Dashboards refresh every hour; a manual refresh is under the dashboard's menu.",
    "kb-102": "API keys are rotated from Settings > Security; old keys stop working after 24 hours.",
    "kb-103": "Exports larger than 1 GB are split into parts and emailed as links.",
    "kb-104": "SSO supports SAML 2.0 and OIDC; SCIM provisioning needs the Enterprise plan.",
    "kb-105": "Billing is monthly per seat; annual plans get two months free.",
    "kb-106": "The SQL editor times out after 10 minutes; schedule long queries as jobs instead.",
}

TOOL_TIMEOUT_MS = 5000.0
CACHED_PROMPT_TOKENS = 40  # tokens of the system prompt a provider caches between calls
# name -> (span type, failure probability, typical latency in ms)
TOOLS: dict[str, tuple[str, float, float]] = {
    "web.fetch": (SpanType.TOOL, 0.25, 900.0),
    "sql.query": (SpanType.TOOL, 0.15, 450.0),
    "calculator": (SpanType.TOOL, 0.03, 15.0),
    "weather.lookup": (SpanType.TOOL, 0.10, 250.0),
}

QUESTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    # question, tools it needs
    "sme": [
        ("How many seats did we add last quarter compared with the one before?", ("sql.query", "calculator")),
        ("Why does the SQL editor time out on my long query?", ("sql.query",)),
        ("What is the exact SAML configuration for Okta?", ("web.fetch",)),
    ],
    "new_user": [
        ("How do I refresh a dashboard?", ()),
        ("Where do I rotate an API key?", ()),
        ("Will it rain at our offsite tomorrow?", ("weather.lookup",)),
    ],
    "power_user": [
        ("Summarise the release notes page for this month", ("web.fetch",)),
        ("What is 17% of our 2,340 active users?", ("calculator",)),
        ("Export last year's events table, it is about 3 GB", ("sql.query",)),
    ],
}


@dataclass
class Step:
    name: str
    span_type: str
    inputs: dict[str, Any]
    outputs: Any = None
    duration_ms: float = 1.0
    error: str | None = None
    error_type: str | None = None  # the exception's type, as MLflow records it on the span's `exception` event
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentRun:
    question: str
    answer: str
    steps: list[Step]
    failed: bool


class DemoAgent:
    def __init__(self, backend: LLMBackend, prompts: AgentPrompts | None = None):
        self.backend = backend
        self.prompts = prompts or AgentPrompts.from_files()
        self.system_prompt = render(self.prompts.system, product=PRODUCT)

    def run(self, question: str, tools: tuple[str, ...] = (), rng: random.Random | None = None) -> AgentRun:
        rng = rng or random.Random(question)
        steps = [self._retrieve(question, rng)]
        plan = self._chat("plan", [{"role": "system", "content": self.system_prompt},
                                   {"role": "user", "content": f"Plan tool calls for: {question}"}], rng)
        steps.append(plan)
        tool_notes = []
        for tool in tools:
            step = self._call_tool(tool, question, rng)
            steps.append(step)
            tool_notes.append(f"{tool}: {'failed (' + step.error + ')' if step.error else step.outputs}")
        if any(s.error for s in steps) and rng.random() < 0.6:
            return AgentRun(question, "", steps, failed=True)  # the agent gives up: an ERROR trace
        context = " ".join(f"[{d}] {KNOWLEDGE_BASE[d]}" for d in steps[0].outputs)
        user = render(self.prompts.answer, question=question, context=context, tools="; ".join(tool_notes) or "none")
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
        reply = self._chat("respond", messages, rng)
        steps.append(reply)
        return AgentRun(question, reply.outputs["content"], steps, failed=False)

    def _retrieve(self, question: str, rng: random.Random) -> Step:
        words = set(question.lower().split())
        ranked = sorted(KNOWLEDGE_BASE, key=lambda d: (-len(words & set(KNOWLEDGE_BASE[d].lower().split())), d))
        return Step("kb.search", SpanType.RETRIEVER, {"query": question}, ranked[:2], rng.uniform(20, 80))

    def _chat(self, name: str, messages: list[dict[str, str]], rng: random.Random) -> Step:
        parameters = self.prompts.model_parameters
        result = self.backend.chat(messages, max_tokens=parameters.get("max_tokens", 256),
                                   temperature=parameters.get("temperature", 0.0))
        usage = {
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens,
            # The system prompt opens every call: the plan call writes it to the provider's prompt cache and
            # the answer call reads it back (as OpenAI and Anthropic report it).
            "cache_creation_input_tokens" if name == "plan" else "cache_read_input_tokens":
                min(result.input_tokens, CACHED_PROMPT_TOKENS),
        }
        cost = {"input_cost": result.input_tokens * 1e-6, "output_cost": result.output_tokens * 4e-6}
        cost["total_cost"] = cost["input_cost"] + cost["output_cost"]
        return Step(
            name, SpanType.CHAT_MODEL, {"messages": messages},
            {"role": "assistant", "content": result.text},
            duration_ms=200 + 12 * result.output_tokens + rng.uniform(0, 300),
            attributes={
                "mlflow.chat.tokenUsage": usage, "mlflow.llm.model": result.model,
                "mlflow.llm.provider": result.provider, "mlflow.llm.cost": cost,
            },
        )

    def _call_tool(self, tool: str, question: str, rng: random.Random) -> Step:
        span_type, failure_rate, latency_ms = TOOLS[tool]
        duration = rng.lognormvariate(0, 0.5) * latency_ms
        if rng.random() < failure_rate:
            if tool == "web.fetch":  # a timeout takes the whole timeout: errors and slow traces go together
                error = f"TimeoutError: upstream did not answer within {TOOL_TIMEOUT_MS / 1000:g} s"
                return Step(tool, span_type, {"question": question}, None, TOOL_TIMEOUT_MS, error=error,
                            error_type="TimeoutError")
            return Step(tool, span_type, {"question": question}, None, duration * 2, error=f"{tool} failed: bad request",
                        error_type="ValueError")
        return Step(tool, span_type, {"question": question}, {"result": f"{tool} ok", "rows": rng.randint(1, 50)}, duration)


def record_trace(
    run: AgentRun,
    *,
    start_ns: int,
    tags: dict[str, str],
    client_request_id: str,
    metadata: dict[str, str] | None = None,
) -> str:
    """Write `run` as one MLflow trace starting at `start_ns`; return its trace id."""
    root = mlflow.start_span_no_context(
        "support_agent", span_type=SpanType.AGENT, inputs={"question": run.question},
        start_time_ns=start_ns, tags=tags, metadata=metadata,
    )
    with InMemoryTraceManager.get_instance().get_trace(root.trace_id) as trace:
        trace.info.client_request_id = client_request_id
    clock = start_ns + 2_000_000
    for step in run.steps:
        span = mlflow.start_span_no_context(
            step.name, span_type=step.span_type, parent_span=root, inputs=step.inputs,
            attributes=step.attributes, start_time_ns=clock,
        )
        clock += int(step.duration_ms * 1e6)
        if step.error:
            span.add_event(mlflow.entities.SpanEvent(
                "exception", attributes={"exception.type": step.error_type, "exception.message": step.error}))
            span.set_status(SpanStatusCode.ERROR)
        span.end(outputs=step.outputs, end_time_ns=clock)
        clock += 1_000_000
    if run.failed:
        failed_step = next(s for s in run.steps if s.error)
        root.set_status(SpanStatusCode.ERROR)
        root.add_event(mlflow.entities.SpanEvent(
            "exception", attributes={"exception.type": failed_step.error_type, "exception.message": failed_step.error}))
        root.end(outputs={"error": failed_step.error}, end_time_ns=clock)
    else:
        root.end(outputs={"answer": run.answer}, end_time_ns=clock)
    return root.trace_id


def question_pool() -> list[tuple[str, str, tuple[str, ...]]]:
    """(persona, question, tools) for every demo question."""
    return [(persona, q, tools) for persona, items in QUESTIONS.items() for q, tools in items]

