"""Outcomes: which traces went badly, declared in a user-editable file (`outcomes/outcomes.yaml`, or the file
`LLMOPS_OUTCOMES` names), never guessed from a value's scale. Root causes are ranked against each outcome.

Undeclared feedback follows MLflow's conventions: a boolean feedback's `false` is bad, a yes/no judge's `no` is bad
(MLflow's built-in judges answer yes, no or unknown), a numeric feedback is an outcome only with a declared
threshold on its own scale, other string feedback only with declared bad values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from assets.insights.breakdowns import TEXT_VALUE, AssessmentInfo, assessments_discovery
from assets.insights.queries import ASSESSMENTS, VALID_FEEDBACK, InsightsQuery, population_filter
from assets.insights.registry import Dimension, counted_keys
from assets.yaml_files import InvalidFilesError, Problem, read_model
from resources import settings

Value = StrictBool | StrictInt | StrictFloat | StrictStr
YES_NO = {"yes", "no", "unknown"}
# YAML reads an unquoted yes/no (and true/false, on/off) as a boolean: for a string feedback, a boolean bad value
# stands for the answers spelled so.
YAML_BOOLEANS = {False: {"no", "false", "off"}, True: {"yes", "true", "on"}}


class AssessmentOutcome(BaseModel):
    """When one feedback is a bad outcome: exactly one of `bad`, `below`, `above` and `ignore`."""

    model_config = ConfigDict(extra="forbid")
    bad: Value | list[Value] | None = Field(default=None, description="The bad value(s): false, 'no', 'curt', 1.")
    # strict: `below: true` is a mistake, not 1.0
    below: float | None = Field(default=None, strict=True, allow_inf_nan=False,
                                description="Numeric feedback below this is bad.")
    above: float | None = Field(default=None, strict=True, allow_inf_nan=False,
                                description="Numeric feedback above this is bad.")
    ignore: StrictBool = Field(default=False, description="Never an outcome (e.g. a boolean feedback where "
                               "false is fine).")

    @model_validator(mode="after")
    def _one_rule(self) -> AssessmentOutcome:
        given = [name for name in ("bad", "below", "above") if getattr(self, name) is not None] + (
            ["ignore"] if self.ignore else [])
        if len(given) != 1:
            raise ValueError(f"give exactly one of bad, below, above and ignore, not {given or 'none'}")
        if self.bad == []:
            raise ValueError("bad: give at least one value")
        return self

    def bad_values(self) -> list[Value]:
        return [] if self.bad is None else self.bad if isinstance(self.bad, list) else [self.bad]


class OutcomeRules(BaseModel):
    """The outcomes file."""

    model_config = ConfigDict(extra="forbid")
    min_support: int = Field(default=3, ge=1, description="Least traces with both the outcome and a dimension "
                             "value for the value to be a root cause.")
    status: list[Literal["ERROR", "OK", "IN_PROGRESS"]] = Field(default=["ERROR"], description="Bad trace statuses.")
    assessments: dict[str, AssessmentOutcome] = Field(default={}, description="Per feedback name, what is bad.")


class OutcomesFileError(InvalidFilesError):
    def __init__(self, problems: list[Problem]):
        super().__init__("Invalid outcomes file:", problems)


def outcomes_path() -> Path:
    return Path(os.environ.get(settings.LLMOPS_OUTCOMES) or settings.DEFAULT_OUTCOMES_FILE)


def load_outcomes(path: Path | None = None) -> OutcomeRules:
    """The outcomes file at `path` (default: LLMOPS_OUTCOMES, else outcomes/outcomes.yaml); problems name file:line."""
    path = Path(path or outcomes_path())
    if not path.is_file():
        raise OutcomesFileError([Problem(str(path), 0, f"outcomes file not found (set {settings.LLMOPS_OUTCOMES})")])
    rules, _, problems = read_model(path, str(path), OutcomeRules)
    if problems:
        raise OutcomesFileError(problems)
    return rules


def outcomes(conn: sa.Connection, query: InsightsQuery, rules: OutcomeRules) -> list[Dimension]:
    """The bad outcomes the population's counted traces have: the declared statuses, and each feedback's declared
    (or MLflow's conventional) bad values and thresholds. An outcome no counted trace has (say a scorer's, found
    on evaluation traces only) is left out."""
    found = [Dimension(name="status", parameters={"value": status}) for status in rules.status]
    for feedback in assessments_discovery(conn, query).data:
        name = f"assessment.{feedback.name}"
        declared = rules.assessments.get(feedback.name)
        if declared is None:
            found += [Dimension(name=name, parameters={"value": value})
                      for value in _conventional(conn, query, feedback)]
        elif declared.below is not None:
            found.append(Dimension(name=name, parameters={"threshold": declared.below, "operator": "<"}))
        elif declared.above is not None:
            found.append(Dimension(name=name, parameters={"threshold": declared.above, "operator": ">"}))
        else:
            found += [Dimension(name=name, parameters={"value": value})
                      for value in _spelled(conn, query, feedback, declared.bad_values())]
    # One query per outcome that stops at its first counted trace, not a count of them all.
    return [outcome for outcome in found if conn.execute(
        sa.select(sa.true()).select_from(counted_keys(outcome, query).subquery()).limit(1)).first()]


def _answers(conn: sa.Connection, query: InsightsQuery, name: str) -> list[str]:
    """Every answer of a string feedback in the population, as spelled."""
    return sorted(conn.execute(
        sa.select(TEXT_VALUE).distinct().where(*population_filter(query, ASSESSMENTS), VALID_FEEDBACK,
                                               ASSESSMENTS.c.name == name)
    ).scalars())


def _conventional(conn: sa.Connection, query: InsightsQuery, feedback: AssessmentInfo) -> list[Value]:
    if feedback.assessment_type == "boolean":
        return [False]
    if feedback.assessment_type == "string":
        answers = _answers(conn, query, feedback.name)
        if {answer.lower() for answer in answers} <= YES_NO:
            return [answer for answer in answers if answer.lower() == "no"]
    return []


def _spelled(conn: sa.Connection, query: InsightsQuery, feedback: AssessmentInfo, values: list[Value]) -> list[Value]:
    """The declared bad values as the feedback holds them: for string feedback, a boolean (YAML's reading of an
    unquoted no) stands for the answers spelled no, false or off (yes, true, on)."""
    if feedback.assessment_type != "string" or not any(isinstance(value, bool) for value in values):
        return values
    answers = _answers(conn, query, feedback.name)
    spelled: list[Value] = []
    for value in values:
        spelled += [a for a in answers if a.lower() in YAML_BOOLEANS[value]] if isinstance(value, bool) else [value]
    return spelled
