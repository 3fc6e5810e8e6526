"""New negative feedback into labeling sessions, exactly once (review queues or Databricks labeling sessions).

A batch of feedback (assessment ids, from the sensor) is matched against the rules; each matching trace is
added to the rule's open session in its experiment unless it is already in one of that rule's sessions (any
day, any part) — so a retried or repeated batch adds nothing twice. Sessions (`backends.py`) are named by the
rule (`thumbs_down 2026-11-25`, then `... #2` when full), with the rule's reviewers and label schemas. A share
of positive-feedback traces is mixed in as controls (chosen deterministically per batch, tagged
`llmops.review_control`). Reviewers' answers are ordinary assessments in MLflow: nothing is stored beside it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import duckdb

from assets.labeling.rules import Rule, RulesFile

if TYPE_CHECKING:  # the backends load MLflow's labeling APIs: imported by the steps that use them
    from assets.labeling.backends import LabelingBackend

CONTROL_TAG = "llmops.review_control"
FEEDBACK_COLUMNS = ("assessment_id", "trace_id", "experiment_id", "name", "source_type", "bool_value", "numeric_value",
                    "string_value", "last_updated_ms")


@dataclass(frozen=True)
class FeedbackRow:
    assessment_id: str
    trace_id: str
    experiment_id: str
    name: str
    source_type: str
    bool_value: bool | None
    numeric_value: float | None
    string_value: str | None
    last_updated_ms: int


def _condition(rule: Rule, row: FeedbackRow) -> bool | None:
    """Whether the feedback is the rule's bad outcome (True), its good one (False), or not comparable (None)."""
    if row.name != rule.feedback or row.source_type not in rule.sources:
        return None
    if rule.below is not None:
        return None if row.numeric_value is None else row.numeric_value < rule.below
    if isinstance(rule.equals, bool):
        return None if row.bool_value is None else row.bool_value == rule.equals
    return None if row.string_value is None else row.string_value == rule.equals


def matches(rule: Rule, row: FeedbackRow) -> bool:
    return _condition(rule, row) is True


_SELECT = f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM assessments WHERE assessment_type = 'feedback' AND valid"


def feedback_after(con: duckdb.DuckDBPyConnection, cursor: tuple[int, str], limit: int,
                   until_ms: int | None = None) -> list[FeedbackRow]:
    """The next feedback rows in (last_updated_ms, assessment_id) order after `cursor`, last updated by
    `until_ms`: equal times are ordered by id, so none is skipped or seen twice."""
    ts, last_id = cursor
    until = until_ms if until_ms is not None else 2**62
    rows = con.execute(f"{_SELECT} AND (last_updated_ms > ? OR (last_updated_ms = ? AND assessment_id > ?)) "
                       "AND last_updated_ms <= ? ORDER BY last_updated_ms, assessment_id LIMIT ?",
                       [ts, ts, last_id, until, limit]).fetchall()
    return [FeedbackRow(*row) for row in rows]


def feedback_rows(con: duckdb.DuckDBPyConnection, assessment_ids: list[str] | None) -> list[FeedbackRow]:
    """The feedback with these ids, or all feedback when `assessment_ids` is None, in cursor order."""
    where, parameters = ("AND list_contains(?, assessment_id)", [assessment_ids]) if assessment_ids is not None else ("", [])
    rows = con.execute(f"{_SELECT} {where} ORDER BY last_updated_ms, assessment_id", parameters).fetchall()
    return [FeedbackRow(*row) for row in rows]


def positive_traces(con: duckdb.DuckDBPyConnection, rule: Rule, experiment_id: str, until_ms: int) -> list[str]:
    """Traces whose feedback was the rule's good outcome by `until_ms`: the pool controls are drawn from (fixed
    for a batch, so a retried batch draws the same)."""
    rows = con.execute(f"{_SELECT} AND name = ? AND experiment_id = ? AND last_updated_ms <= ?",
                       [rule.feedback, experiment_id, until_ms]).fetchall()
    return sorted({row.trace_id for row in (FeedbackRow(*r) for r in rows) if _condition(rule, row) is False})


@dataclass
class SessionChange:
    rule: str
    experiment_id: str
    session: str
    added: int
    controls: int


def add_to_sessions(backend: LabelingBackend, rules: RulesFile, rows: list[FeedbackRow], con: duckdb.DuckDBPyConnection,
                    tracking_uri: str, batch_key: str, controls_until_ms: int,
                    now: datetime | None = None) -> list[SessionChange]:
    """Add each matching trace of `rows` to its rule's open session, unless one of the rule's sessions has it;
    controls are drawn from feedback last updated by `controls_until_ms`."""
    from mlflow import MlflowClient

    now = now or datetime.now(timezone.utc)
    client, changes = MlflowClient(tracking_uri), []
    for rule in rules.rules:
        by_experiment: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if matches(rule, row) and row.trace_id not in by_experiment[row.experiment_id]:
                by_experiment[row.experiment_id].append(row.trace_id)
        for experiment_id, trace_ids in by_experiment.items():
            specs = [s for s in rules.label_schemas if s.name in rule.label_schemas]
            schemas = backend.ensure_schemas(experiment_id, specs)
            sessions = {s.name: s for s in backend.sessions(experiment_id) if rule.owns(s.name)}
            filled = {s.id: [i.trace_id for i in backend.items(s)] for s in sessions.values()}
            seen = {item for items in filled.values() for item in items}
            negatives = [t for t in trace_ids if t not in seen]
            if not negatives:
                continue
            rng = random.Random(f"{batch_key}/{rule.name}/{experiment_id}")
            controls: list[str] = []
            if rule.controls_share:
                wanted = round(len(negatives) * rule.controls_share / (1 - rule.controls_share))
                pool = [t for t in positive_traces(con, rule, experiment_id, controls_until_ms) if t not in seen]
                controls = rng.sample(pool, min(wanted, len(pool)))
            pending = negatives + controls
            rng.shuffle(pending)  # reviewers cannot tell controls by their place
            part = 1
            while pending:
                name = rule.session(now, part)
                session = sessions.get(name)
                if session is None:
                    session = backend.create(experiment_id, name, rule.reviewers, schemas)
                    sessions[name], filled[session.id] = session, []
                room = rule.max_items_per_session - len(filled[session.id])
                if room <= 0:
                    part += 1
                    continue
                chunk, pending = pending[:room], pending[room:]
                backend.add(session, chunk)
                filled[session.id] += chunk
                chunk_controls = [t for t in chunk if t in controls]
                for trace_id in chunk_controls:
                    client.set_trace_tag(trace_id, CONTROL_TAG, rule.name)
                changes.append(SessionChange(rule.name, experiment_id, name, len(chunk) - len(chunk_controls),
                                             len(chunk_controls)))
    return changes


def progress_rows(backend: LabelingBackend, rules: RulesFile, experiment_ids: list[str], now_ms: int) -> list[tuple]:
    """Per session: (session, rule, experiment, reviewers, items, pending, completed, declined, created, age h,
    oldest pending age h)."""
    rows = []
    for experiment_id in experiment_ids:
        for session in backend.sessions(experiment_id):
            rule = next((r.name for r in rules.rules if r.owns(session.name)), None)
            if rule is None:
                continue
            items = backend.items(session)
            status = defaultdict(int)
            for item in items:
                status[item.status] += 1
            pending = [i.created_ms for i in items if i.status == "pending"]
            rows.append((
                session.name, rule, experiment_id, ", ".join(session.reviewers), len(items), status["pending"],
                status["complete"], status["declined"],
                datetime.fromtimestamp(session.created_ms / 1000, timezone.utc).replace(tzinfo=None),
                round((now_ms - session.created_ms) / 3_600_000, 2),
                round((now_ms - min(pending)) / 3_600_000, 2) if pending else None,
            ))
    return rows
