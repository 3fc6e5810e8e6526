"""Outcomes: which traces went badly (status ERROR, each boolean feedback = false, each numeric feedback below its
threshold, `no` from yes/no judges). Root causes are ranked against each, and `session` dimensions name them."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from assets.insights.breakdowns import TEXT_VALUE, assessments_discovery
from assets.insights.queries import ASSESSMENTS, VALID_FEEDBACK, InsightsQuery, population_filter
from assets.insights.registry import Dimension


@dataclass
class OutcomeRules:
    min_support: int = 5
    numeric_threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)  # per numeric feedback name


# MLflow's built-in judges answer with a CategoricalRating: yes, no (the failing answer) or unknown.
YES_NO = {"yes", "no", "unknown"}


def outcomes(conn: sa.Connection, query: InsightsQuery, rules: OutcomeRules) -> list[Dimension]:
    """The bad outcomes found in the data: ERROR traces, negative boolean feedback, low numeric feedback, and
    `no` from yes/no judges."""
    found = [Dimension(name="status", parameters={"value": "ERROR"})]
    for info in assessments_discovery(conn, query).data:
        if info.assessment_type == "boolean":
            found.append(Dimension(name=f"assessment.{info.name}", parameters={"value": False}))
        elif info.assessment_type == "numeric":
            limit = rules.thresholds.get(info.name, rules.numeric_threshold)
            found.append(Dimension(name=f"assessment.{info.name}", parameters={"threshold": limit, "operator": "<"}))
        elif no := _failing_answer(conn, query, info.name):
            found.append(Dimension(name=f"assessment.{info.name}", parameters={"value": no}))
    return found


def _failing_answer(conn: sa.Connection, query: InsightsQuery, name: str) -> str | None:
    """The `no` of a string feedback whose every answer is yes, no or unknown (as spelled), else None."""
    answers = conn.execute(
        sa.select(TEXT_VALUE).distinct().where(*population_filter(query, ASSESSMENTS), VALID_FEEDBACK,
                                               ASSESSMENTS.c.name == name)
    ).scalars().all()
    if not {answer.lower() for answer in answers} <= YES_NO:
        return None
    return next((answer for answer in answers if answer.lower() == "no"), None)
