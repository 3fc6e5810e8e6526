"""LLM backends for the demo agent: an offline deterministic one (default) and Databricks Foundation Models.

Chosen by `LLMOPS_AGENT_BACKEND` (`offline` | `databricks`); the Databricks endpoint by
`LLMOPS_AGENT_ENDPOINT`. Databricks credentials come only from databricks-sdk's unified auth
(environment variables or a config profile), never from this project's config.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Protocol

from resources.settings import DEFAULT_AGENT_ENDPOINT, LLMOPS_AGENT_BACKEND, LLMOPS_AGENT_ENDPOINT


@dataclass(frozen=True)
class ChatResult:
    text: str
    model: str
    provider: str
    input_tokens: int
    output_tokens: int


class LLMBackend(Protocol):
    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        ...


def _count_tokens(text: str) -> int:
    # Roughly what a BPE tokenizer gives for English: 3/4 of a word per token.
    return max(1, round(len(text.split()) * 4 / 3))


NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
SENTENCE_LIMIT = re.compile(r"at most (\d+|" + "|".join(NUMBER_WORDS) + r") sentences?", re.IGNORECASE)
ARTICLE = re.compile(r"\[(kb-\d+)\]")


class OfflineBackend:
    """Deterministic answers with realistic token counts: the same messages always give the same reply.

    Like an instruction-following model it obeys two things a system prompt may say: "at most N sentences"
    caps the answer's sentences, and "cite" adds "Source: kb-NNN" for the first article in the user's context.
    So editing a prompt changes what the evaluation measures, offline.
    """

    model = "offline-demo-llm"
    provider = "llmops-offline"
    _openers = (
        "Here is what I found",
        "Based on the knowledge base",
        "Short answer",
        "Thanks for asking",
    )

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        topic = " ".join(question.split("\n")[0].split()[:8]).rstrip("?.!")
        sentences = 1 + digest % 5
        if limit := SENTENCE_LIMIT.search(system):
            word = limit.group(1).lower()
            sentences = min(sentences, int(word) if word.isdigit() else NUMBER_WORDS[word])
        body = ". ".join(f"Point {i + 1} about {topic}" for i in range(sentences))
        text = f"{self._openers[digest % len(self._openers)]}: {body}."
        if "cite" in system.lower() and (article := ARTICLE.search(question)):
            text += f" Source: {article.group(1)}."
        words = text.split()[: max(1, max_tokens * 3 // 4)]
        text = " ".join(words)
        return ChatResult(text, self.model, self.provider, _count_tokens(prompt), _count_tokens(text))


class DatabricksBackend:
    """A Databricks Foundation Model (or any chat serving endpoint) through databricks-sdk."""

    provider = "databricks"

    def __init__(self, endpoint: str, workspace_client=None):
        self.model = endpoint
        self._client = workspace_client

    def _workspace(self):
        if self._client is None:
            from databricks.sdk import WorkspaceClient

            self._client = WorkspaceClient()  # unified auth: env vars, profile, or cloud identity
        return self._client

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        from databricks.sdk.service.serving import ChatMessage, ChatMessageRole

        response = self._workspace().serving_endpoints.query(
            name=self.model,
            messages=[ChatMessage(role=ChatMessageRole(m["role"]), content=m["content"]) for m in messages],
            max_tokens=max_tokens,
            temperature=temperature,
        )
        text = response.choices[0].message.content if response.choices else ""
        usage = response.usage
        return ChatResult(
            text=text,
            model=response.model or self.model,
            provider=self.provider,
            input_tokens=(usage.prompt_tokens if usage else None) or _count_tokens(str(messages)),
            output_tokens=(usage.completion_tokens if usage else None) or _count_tokens(text),
        )


def backend_from_env() -> LLMBackend:
    name = os.environ.get(LLMOPS_AGENT_BACKEND, "offline").strip().lower()
    if name == "offline":
        return OfflineBackend()
    if name == "databricks":
        return DatabricksBackend(os.environ.get(LLMOPS_AGENT_ENDPOINT) or DEFAULT_AGENT_ENDPOINT)
    raise ValueError(f"{LLMOPS_AGENT_BACKEND} must be 'offline' or 'databricks', not {name!r}")
