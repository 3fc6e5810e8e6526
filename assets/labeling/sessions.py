"""New negative feedback into labeling sessions, exactly once, on MLflow's review queues (OSS tracking stores).

A batch of feedback (assessment ids, from the sensor) is matched against the rules; each matching trace is
added to the rule's open session in its experiment unless it is already in one of that rule's sessions (any
day, any part) — so a retried or repeated batch adds nothing twice. Sessions are review queues named by the
rule (`thumbs_down 2026-11-25`, then `... #2` when full), with the rule's reviewers and label schemas. A share
of positive-feedback traces is mixed in as controls (chosen deterministically per batch, tagged
`llmops.review_control`). Reviewers' answers are ordinary assessments in MLflow: nothing is stored beside it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb
from mlflow import MlflowClient
from mlflow.genai import label_schemas, review_queues

from assets.labeling.rules import LabelSchemaSpec, Rule, RulesFile

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


def feedback_after(con: duckdb.DuckDBPyConnection, cursor: tuple[int, str], limit: int) -> list[FeedbackRow]:
    """The next feedback rows in (last_updated_ms, assessment_id) order after `cursor`: equal times are ordered
    by id, so none is skipped or seen twice."""
    ts, last_id = cursor
    rows = con.execute(f"{_SELECT} AND (last_updated_ms > ? OR (last_updated_ms = ? AND assessment_id > ?)) "
                       "ORDER BY last_updated_ms, assessment_id LIMIT ?", [ts, ts, last_id, limit]).fetchall()
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


def _schema_input(spec: LabelSchemaSpec):
    i = spec.input
    return {
        "pass_fail": lambda: label_schemas.InputPassFail(positive_label=i.positive_label, negative_label=i.negative_label),
        "categorical": lambda: label_schemas.InputCategorical(options=i.options),
        "categorical_list": lambda: label_schemas.InputCategoricalList(options=i.options),
        "numeric": lambda: label_schemas.InputNumeric(min_value=i.min_value, max_value=i.max_value),
        "text": lambda: label_schemas.InputText(max_length=i.max_length),
        "text_list": lambda: label_schemas.InputTextList(max_length_each=i.max_length),
    }[i.kind]()


class ReviewQueues:
    """MLflow's review queues and label schemas (its fluent API: the caller points MLflow at the store)."""

    def ensure_schemas(self, experiment_id: str, specs: list[LabelSchemaSpec]) -> list[str]:
        """The label schemas' ids in the experiment, creating the missing ones (once: found by name after)."""
        existing = {s.name: s.schema_id for s in label_schemas.list_label_schemas(experiment_id, max_results=1000)}
        for spec in specs:
            if spec.name not in existing:
                # `title` is a Databricks Review App field: a tracking store shows it as the instruction's first line
                instruction = "\n\n".join(text for text in (spec.title, spec.instruction) if text) or None
                existing[spec.name] = label_schemas.create_label_schema(
                    spec.name, type=spec.type, input=_schema_input(spec), instruction=instruction,
                    enable_comment=spec.enable_comment, experiment_id=experiment_id,
                ).schema_id
        return [existing[spec.name] for spec in specs]

    def sessions(self, experiment_id: str) -> list:
        queues, token = [], None
        while True:
            page = review_queues.list_review_queues(experiment_id=experiment_id, max_results=100, page_token=token)
            queues += list(page)
            if not (token := page.token):
                return queues

    def items(self, queue_id: str) -> list:
        items, token = [], None
        while True:
            page = review_queues.list_review_queue_items(queue_id, max_results=500, page_token=token)
            items += list(page)
            if not (token := page.token):
                return items

    def create(self, experiment_id: str, name: str, reviewers: list[str], schema_ids: list[str]):
        return review_queues.create_review_queue(name, queue_type="custom", users=reviewers, schema_ids=schema_ids,
                                                 experiment_id=experiment_id)

    def add(self, queue_id: str, trace_ids: list[str]) -> None:
        review_queues.add_items_to_review_queue(queue_id, item_ids=trace_ids)


@dataclass
class SessionChange:
    rule: str
    experiment_id: str
    session: str
    added: int
    controls: int


def add_to_sessions(queues: ReviewQueues, rules: RulesFile, rows: list[FeedbackRow], con: duckdb.DuckDBPyConnection,
                    tracking_uri: str, batch_key: str, controls_until_ms: int,
                    now: datetime | None = None) -> list[SessionChange]:
    """Add each matching trace of `rows` to its rule's open session, unless one of the rule's sessions has it;
    controls are drawn from feedback last updated by `controls_until_ms`."""
    now = now or datetime.now(timezone.utc)
    client, changes = MlflowClient(tracking_uri), []
    for rule in rules.rules:
        by_experiment: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if matches(rule, row) and row.trace_id not in by_experiment[row.experiment_id]:
                by_experiment[row.experiment_id].append(row.trace_id)
        for experiment_id, trace_ids in by_experiment.items():
            specs = [s for s in rules.label_schemas if s.name in rule.label_schemas]
            schema_ids = queues.ensure_schemas(experiment_id, specs)
            sessions = {q.name: q for q in queues.sessions(experiment_id) if rule.owns(q.name)}
            filled = {q.queue_id: [i.item_id for i in queues.items(q.queue_id)] for q in sessions.values()}
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
                queue = sessions.get(name)
                if queue is None:
                    queue = queues.create(experiment_id, name, rule.reviewers, schema_ids)
                    sessions[name], filled[queue.queue_id] = queue, []
                room = rule.max_items_per_session - len(filled[queue.queue_id])
                if room <= 0:
                    part += 1
                    continue
                chunk, pending = pending[:room], pending[room:]
                queues.add(queue.queue_id, chunk)
                filled[queue.queue_id] += chunk
                chunk_controls = [t for t in chunk if t in controls]
                for trace_id in chunk_controls:
                    client.set_trace_tag(trace_id, CONTROL_TAG, rule.name)
                changes.append(SessionChange(rule.name, experiment_id, name, len(chunk) - len(chunk_controls),
                                             len(chunk_controls)))
    return changes


def progress_rows(queues: ReviewQueues, rules: RulesFile, experiment_ids: list[str], now_ms: int) -> list[tuple]:
    """Per session: (session, rule, experiment, reviewers, items, pending, completed, declined, created, age h,
    oldest pending age h)."""
    rows = []
    for experiment_id in experiment_ids:
        for queue in queues.sessions(experiment_id):
            rule = next((r.name for r in rules.rules if r.owns(queue.name)), None)
            if rule is None:
                continue
            items = queues.items(queue.queue_id)
            status = defaultdict(int)
            for item in items:
                status[item.status.value] += 1
            pending = [i.creation_time_ms for i in items if i.status.value == "pending"]
            rows.append((
                queue.name, rule, experiment_id, ", ".join(queue.users), len(items), status["pending"],
                status["complete"], status["declined"],
                datetime.fromtimestamp(queue.creation_time_ms / 1000, timezone.utc).replace(tzinfo=None),
                round((now_ms - queue.creation_time_ms) / 3_600_000, 2),
                round((now_ms - min(pending)) / 3_600_000, 2) if pending else None,
            ))
    return rows
