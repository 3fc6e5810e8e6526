"""Eval suites (`evals/*.yaml` or `*.json`) and their registration as MLflow evaluation datasets.

A suite, in the seed's shape (examples with inputs, expectations and tags):

    name: support_agent_eval
    description: Questions the demo support agent must answer well.
    examples:
      - id: refresh_dashboard
        inputs: {question: "How do I refresh a dashboard?", tools: []}
        expectations: {expected_source: kb-101, max_sentences: 3}
        tags: {persona: new_user}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from assets.prompts.files import NAME
from assets.vocabulary import EXAMPLE_ID_TAG
from assets.yaml_files import InvalidFilesError, Problem, line_of, read_folder
from resources.agent.demo_agent import TOOLS

PATTERNS = ("*.yaml", "*.yml", "*.json")


class ExampleInputs(BaseModel):
    """What the demo agent's predict function takes."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(min_length=1)
    tools: list[str] = []

    @model_validator(mode="after")
    def _known_tools(self) -> ExampleInputs:
        if unknown := sorted(set(self.tools) - set(TOOLS)):
            raise ValueError(f"unknown tools {unknown}; the agent has {sorted(TOOLS)}")
        return self


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(pattern=NAME)
    inputs: ExampleInputs
    expectations: dict[str, Any] = {}
    tags: dict[str, str] = {}


class EvalSuite(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME, max_length=256)
    description: str = ""
    examples: list[Example] = Field(min_length=1)

    def records(self) -> list[dict[str, Any]]:
        """The examples as MLflow dataset records; the example id travels as a tag onto each eval trace."""
        return [
            {"inputs": e.inputs.model_dump(), "expectations": e.expectations, "tags": {**e.tags, EXAMPLE_ID_TAG: e.id}}
            for e in self.examples
        ]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.records(), sort_keys=True).encode()).hexdigest()


class EvalFileError(InvalidFilesError):
    def __init__(self, problems: list[Problem]):
        super().__init__("Invalid eval files:", problems)


@dataclass(frozen=True)
class LoadedSuite:
    suite: EvalSuite
    source: str


def load_eval_suites(folder: Path) -> list[LoadedSuite]:
    """Every suite in `folder`, validated (unique suite names, unique example ids and inputs)."""
    parsed, problems = read_folder(folder, PATTERNS, EvalSuite, "no eval suites (*.yaml, *.json) (set LLMOPS_EVALS_DIR)")
    loaded, names = [], {}
    for shown, suite, node in parsed:
        seen_ids, seen_inputs = set(), set()
        for index, example in enumerate(suite.examples):
            inputs = json.dumps(example.inputs.model_dump(), sort_keys=True)
            if example.id in seen_ids or inputs in seen_inputs:  # MLflow datasets key records by their inputs
                what = f"id {example.id!r}" if example.id in seen_ids else "the same inputs"
                problems.append(Problem(shown, line_of(node, ("examples", index)), f"examples.{index}: {what} twice"))
            seen_ids.add(example.id)
            seen_inputs.add(inputs)
        if suite.name in names:
            problems.append(Problem(shown, line_of(node, ("name",)), f"name: {suite.name!r} is already used by {names[suite.name]}"))
        names[suite.name] = shown
        loaded.append(LoadedSuite(suite, shown))
    if problems:
        raise EvalFileError(problems)
    return loaded


def register_dataset(suite: EvalSuite, experiment_id: str):
    """The suite as an MLflow evaluation dataset of the same name, holding exactly the file's examples."""
    from mlflow.genai.datasets import create_dataset, search_datasets

    found = search_datasets(experiment_ids=[experiment_id], filter_string=f"name = '{suite.name}'", max_results=10)
    dataset = found[0] if found else create_dataset(name=suite.name, experiment_id=experiment_id)
    wanted = {json.dumps(r["inputs"], sort_keys=True) for r in suite.records()}
    existing = dataset.to_df()
    if len(existing):
        stale = [rid for rid, inputs in zip(existing["dataset_record_id"], existing["inputs"])
                 if json.dumps(inputs, sort_keys=True) not in wanted]
        if stale:
            dataset.delete_records(stale)
    dataset.merge_records(suite.records())
    return dataset
