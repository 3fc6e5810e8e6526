"""Scorers of the eval suite: the seed's code scorers as MLflow `@scorer` functions, and LLM judges.

Code scorers check what the demo agent's system prompt asks for: a well-formed answer (schema), at most
`max_sentences` sentences, a cited knowledge-base article (the expected one, when the example names it),
clean formatting, and a required prefix where an example asks for one. A scorer returns None when an
example does not apply to it (skipped, not counted). LLM judges run only when a judge endpoint is
configured (`LLMOPS_JUDGE_ENDPOINT`, a Databricks serving endpoint); offline they are skipped with a note.
"""

from __future__ import annotations

import re

from mlflow.entities import Feedback
from mlflow.genai.scorers import Guidelines, scorer

from resources.settings import LLMOPS_JUDGE_ENDPOINT

CITATION = re.compile(r"\s*Source: (kb-\d+)\.?\s*$")
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _answer(outputs) -> str:
    return outputs.get("answer", "") if isinstance(outputs, dict) else ""


@scorer
def schema_validity(outputs) -> Feedback:
    ok = isinstance(outputs, dict) and isinstance(outputs.get("answer"), str) and bool(outputs["answer"].strip()) \
        and isinstance(outputs.get("sources"), list)
    return Feedback(value=ok, rationale="answer text and sources list" if ok else f"malformed output: {outputs!r:.200}")


@scorer
def sentence_count(outputs, expectations) -> Feedback:
    body = CITATION.sub("", _answer(outputs))
    count = len(SENTENCE_END.findall(body.strip()))
    limit = int((expectations or {}).get("max_sentences", 3))
    return Feedback(value=0 < count <= limit, rationale=f"{count} sentences (at most {limit})")


@scorer
def cites_source(outputs, expectations) -> Feedback:
    cited = CITATION.search(_answer(outputs))
    expected = (expectations or {}).get("expected_source")
    if cited is None:
        return Feedback(value=False, rationale="no 'Source: kb-NNN' citation")
    if expected and cited.group(1) != expected:
        return Feedback(value=False, rationale=f"cites {cited.group(1)}, expected {expected}")
    return Feedback(value=True, rationale=f"cites {cited.group(1)}")


@scorer
def formatting(outputs) -> Feedback:
    answer = _answer(outputs)
    problems = [
        reason for failed, reason in [
            ("{{" in answer or "}}" in answer, "unrendered template variable"),
            (answer != answer.strip(), "leading or trailing whitespace"),
            (bool(re.search(r"^#|\n\s*\n", answer, re.MULTILINE)), "markdown heading or blank line"),
            (not answer.rstrip().endswith((".", "!", "?")), "does not end with punctuation"),
        ] if failed
    ]
    return Feedback(value=not problems, rationale="; ".join(problems) or "clean")


@scorer
def required_prefix(outputs, expectations) -> Feedback | None:
    prefix = (expectations or {}).get("required_prefix")
    if not prefix:
        return None
    ok = _answer(outputs).startswith(prefix)
    return Feedback(value=ok, rationale=f"starts with {prefix!r}" if ok else f"does not start with {prefix!r}")


CODE_SCORERS = [schema_validity, sentence_count, cites_source, formatting, required_prefix]


def judge_scorers(endpoint: str | None) -> tuple[list, str | None]:
    """LLM-judge scorers on a Databricks serving endpoint, or none and the note saying why."""
    if not endpoint:
        return [], f"LLM-judge scorers skipped: no judge endpoint configured ({LLMOPS_JUDGE_ENDPOINT})"
    return [
        Guidelines(name="helpful_and_grounded", model=f"databricks:/{endpoint}", guidelines=[
            "The answer addresses the user's question directly.",
            "The answer does not state facts that the cited knowledge-base article does not support.",
        ]),
    ], None
