"""Labeling rules (`labeling/rules.yaml`, or `LLMOPS_LABELING_RULES`): which feedback opens expert review, the
label schemas reviewers answer, who reviews, and how sessions are named and rolled."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from assets.yaml_files import InvalidFilesError, Problem, read_model

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SchemaInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["pass_fail", "categorical", "categorical_list", "numeric", "text", "text_list"]
    options: list[str] | None = None  # categorical kinds
    positive_label: str = "Pass"  # pass_fail
    negative_label: str = "Fail"
    min_value: float | None = None  # numeric
    max_value: float | None = None
    max_length: int | None = Field(default=None, gt=0)  # text kinds

    @model_validator(mode="after")
    def _options(self) -> SchemaInput:
        if self.kind.startswith("categorical") and not self.options:
            raise ValueError(f"a {self.kind} input needs options")
        return self


class LabelSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    type: Literal["feedback", "expectation"]
    input: SchemaInput
    title: str | None = None
    instruction: str | None = None
    enable_comment: bool = False


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    feedback: str = Field(min_length=1, description="The feedback's name, e.g. user_thumbs.")
    equals: StrictBool | StrictStr | None = Field(default=None, description="Value that opens review.")
    below: float | None = Field(default=None, description="Numeric feedback below this opens review.")
    sources: list[Literal["HUMAN", "LLM_JUDGE", "CODE"]] = Field(default=["HUMAN"], min_length=1)
    label_schemas: list[str] = Field(min_length=1)
    reviewers: list[str] = []
    max_items_per_session: int = Field(default=100, gt=0)
    session_name: str = Field(default="{rule} {date}", min_length=1)
    controls_share: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_condition(self) -> Rule:
        if (self.equals is None) == (self.below is None):
            raise ValueError("give exactly one of `equals` (boolean or string feedback) and `below` (numeric)")
        if "{date}" not in self.session_name and "{rule}" not in self.session_name:
            raise ValueError("session_name must contain {rule} or {date}")
        return self

    def session(self, day: datetime, part: int = 1) -> str:
        name = self.session_name.format(rule=self.name, date=day.astimezone(timezone.utc).strftime("%Y-%m-%d"))
        return name if part == 1 else f"{name} #{part}"

    def owns(self, session: str) -> bool:
        """Whether a review queue of this name is one of this rule's sessions (any day, any part)."""
        pattern = re.escape(self.session_name).replace(re.escape("{rule}"), re.escape(self.name))
        pattern = pattern.replace(re.escape("{date}"), r"\d{4}-\d{2}-\d{2}")
        return re.fullmatch(pattern + r"( #\d+)?", session) is not None


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_schemas: list[LabelSchemaSpec] = []
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> RulesFile:
        known = [s.name for s in self.label_schemas]
        for names, what in ((known, "label schema"), ([r.name for r in self.rules], "rule")):
            if duplicates := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"{what} names must be unique: {duplicates}")
        for rule in self.rules:
            if missing := sorted(set(rule.label_schemas) - set(known)):
                raise ValueError(f"rule {rule.name!r} asks label schemas {missing} that label_schemas does not define")
        return self


class RulesFileError(InvalidFilesError):
    def __init__(self, problems: list[Problem]):
        super().__init__("Invalid labeling rules:", problems)


def load_rules(path: Path) -> RulesFile:
    path = Path(path)
    if not path.is_file():
        raise RulesFileError([Problem(str(path), 0, "labeling rules file not found (set LLMOPS_LABELING_RULES)")])
    rules, _, problems = read_model(path, str(path), RulesFile)
    if problems:
        raise RulesFileError(problems)
    return rules
