"""Incidents and their notifications in the warehouse (no Dagster).

An incident opens when a rule's evaluation fires for a scope with none open, and resolves when an evaluation
finds it OK again: one notification per channel at each of the two, never one per evaluation. Notifications are
queued in `alert_notifications` in the transaction that opens or resolves the incident, then delivered; one that
fails stays queued with its error and is tried again by the next evaluation, so none is lost. Each is recorded
delivered right after its receiver took it; a process killed in between would send it again with the same
notification id (`Idempotency-Key`, `Message-ID`), which receivers can drop.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import sqlalchemy as sa

from assets.alerts.evaluation import FIRING, OK, Evaluation, evaluate
from assets.alerts.listing import ALERT_INCIDENTS, ALERT_NOTIFICATIONS, utc_time
from assets.alerts.metrics import METRICS
from assets.alerts.rules import Channel, RulesFile
from assets.insights.dimensions import rank_against
from assets.insights.registry import Population
from assets.insights.rollups import positive_causes
from resources import notify
from resources.settings import mask_uri

TOP_CAUSES = 3
OPENED, RESOLVED = "opened", "resolved"


@dataclass
class Changes:
    opened: list[str] = field(default_factory=list)  # incident ids
    resolved: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def window_root_causes(conn: sa.Connection, evaluation: Evaluation, now_ms: int) -> list[dict]:
    """The dimension values that go with the rule's outcome (errors, slow traces, the feedback counted) among the
    window's production traces, best NPMI first; none for totals (cost, volume) and endpoints."""
    rule = evaluation.rule
    outcome = METRICS[rule.metric].outcome(rule, evaluation.threshold)
    if outcome is None or evaluation.experiment_id is None:
        return []
    window = Population(experiment_ids=[evaluation.experiment_id], start_time=now_ms - rule.window_s * 1000,
                        end_time=now_ms - 1)
    ranked = rank_against(conn, window, [outcome], rule.min_support)[0]
    causes = positive_causes(ranked)[:TOP_CAUSES]
    return [{"description": found.description, "dimension": found.dimension.name,
             "parameters": found.dimension.parameters, "npmi": round(found.correlation.npmi_score, 4),
             "count": found.count, "intersection_count": found.intersection_count,
             "mlflow_filter": found.mlflow_filter} for found in causes]


def open_incidents(conn: sa.Connection) -> list[sa.Row]:
    """The incidents not resolved, newest first."""
    return conn.execute(sa.select(ALERT_INCIDENTS).where(ALERT_INCIDENTS.c.resolved_at_ms.is_(None))
                        .order_by(ALERT_INCIDENTS.c.opened_at_ms.desc())).all()


def _queue(conn: sa.Connection, incident_id: str, event: str, channels: list[Channel], now_ms: int) -> None:
    rows = [{"notification_id": str(uuid.uuid4()), "incident_id": incident_id, "event": event,
             "channel": channel.name, "created_at_ms": now_ms, "attempts": 0} for channel in channels]
    if rows:
        conn.execute(ALERT_NOTIFICATIONS.insert(), rows)


def record(conn: sa.Connection, evaluations: list[Evaluation], rules: RulesFile, now_ms: int,
           source: str) -> Changes:
    """Open, keep or resolve each scope's incident from its evaluation and queue the notifications (inside the
    caller's transaction). An open incident of a rule the file no longer has resolves without notification."""
    changes = Changes()
    open_now = {(row.rule, row.scope): row for row in open_incidents(conn)
                if METRICS.get(row.metric) is None or METRICS[row.metric].source == source}
    for evaluation in evaluations:
        rule = evaluation.rule
        incident = open_now.pop((rule.name, evaluation.scope), None)
        if evaluation.state == FIRING and incident is None:
            incident_id, event = str(uuid.uuid4()), OPENED
            conn.execute(ALERT_INCIDENTS.insert().values(
                incident_id=incident_id, rule=rule.name, metric=rule.metric, scope=evaluation.scope,
                experiment_id=evaluation.experiment_id, scope_name=evaluation.scope_name, opened_at_ms=now_ms,
                window_s=rule.window_s, direction=rule.direction, threshold=evaluation.threshold,
                baseline=evaluation.baseline, value=evaluation.value, sample_count=evaluation.count,
                condition=evaluation.condition,
                root_causes_json=json.dumps(window_root_causes(conn, evaluation, now_ms)),
                last_value=evaluation.value, last_evaluated_at_ms=now_ms))
            changes.opened.append(incident_id)
        elif incident is not None:
            incident_id, event = incident.incident_id, RESOLVED if evaluation.state == OK else None
            conn.execute(ALERT_INCIDENTS.update().where(ALERT_INCIDENTS.c.incident_id == incident_id)
                         .values(last_value=evaluation.value, last_evaluated_at_ms=now_ms,
                                 resolved_at_ms=now_ms if event else None))
            if event:
                changes.resolved.append(incident_id)
        else:
            continue
        if event:
            channels = [rules.channels[name] for name in rule.notify]
            _queue(conn, incident_id, event, [c for c in channels if c.off is None], now_ms)
            changes.warnings += [f"channel {c.name} is off ({c.off}): the {event} incident of rule {rule.name} "
                                 "is not sent there" for c in channels if c.off is not None]
    names = {rule.name for rule in rules.rules}
    for (rule_name, _scope), incident in open_now.items():
        if rule_name not in names:
            conn.execute(ALERT_INCIDENTS.update().where(ALERT_INCIDENTS.c.incident_id == incident.incident_id)
                         .values(resolved_at_ms=now_ms, last_evaluated_at_ms=now_ms))
            changes.resolved.append(incident.incident_id)
            changes.warnings.append(f"incident {incident.incident_id} resolved: rule {rule_name} is no longer "
                                    "in the rules file")
    return changes


# --- notifications ---------------------------------------------------------------------------------------------------


def _duration(ms: int) -> str:
    minutes = max(1, round(ms / 60_000))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def links(experiment_id: str | None, tracking_uri: str | None, public_url: str | None) -> dict[str, str]:
    """Where to look: the report (when `llmops serve` has a public URL) and the experiment in MLflow's UI (for an
    http(s) tracking server; its credentials left out)."""
    found = {}
    if public_url:
        found["report"] = f"{public_url.rstrip('/')}/report"
    if experiment_id and tracking_uri and urlsplit(tracking_uri).scheme in ("http", "https"):
        parts = urlsplit(tracking_uri)
        base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
        found["mlflow"] = mask_uri(f"{base}/#/experiments/{experiment_id}/traces")
    return found


def message(notification: sa.Row, incident: sa.Row, where: dict[str, str]) -> notify.Message:
    """The notification in words (subject and text) and as structured fields; the same at every retry."""
    causes = json.loads(incident.root_causes_json)
    metric = METRICS.get(incident.metric)
    if notification.event == OPENED:
        subject = f"[llmops] OPEN {incident.rule} in {incident.scope_name}: {incident.condition}"
        lines = [f"OPEN: {incident.rule} in {incident.scope_name}",
                 f"{incident.condition} ({incident.sample_count} samples), since {utc_time(incident.opened_at_ms)}."]
        if incident.resolved_at_ms is not None:  # delivered late: say it is over
            lines.append(f"(Resolved since {utc_time(incident.resolved_at_ms)}.)")
        if causes:
            lines.append("Top root causes (what goes with it in the window):")
            lines += [f"  {n}. {c['description']} (NPMI {c['npmi']:.2f}; {c['intersection_count']} of the "
                      f"{c['count']} traces with it)" for n, c in enumerate(causes, start=1)]
    else:
        now = "no value" if incident.last_value is None or metric is None else metric.shown(incident.last_value)
        subject = f"[llmops] RESOLVED {incident.rule} in {incident.scope_name}: {incident.metric} {now}"
        lines = [f"RESOLVED: {incident.rule} in {incident.scope_name}",
                 f"{incident.metric} is {now} now; it was {incident.condition}.",
                 f"Open for {_duration((incident.resolved_at_ms or 0) - incident.opened_at_ms)} "
                 f"(since {utc_time(incident.opened_at_ms)})."]
    lines += [f"{name.capitalize()}: {url}" for name, url in where.items()]
    fields = {
        "event": notification.event,
        "incident": {key: getattr(incident, key) for key in (
            "incident_id", "rule", "metric", "scope", "experiment_id", "scope_name", "opened_at_ms",
            "resolved_at_ms", "window_s", "direction", "threshold", "baseline", "value", "sample_count",
            "condition", "last_value")},
        "root_causes": causes, "links": where,
    }
    return notify.Message(notification.notification_id, subject, "\n".join(lines), fields)


def send(channel: Channel, note: notify.Message) -> None:
    if channel.kind == "webhook":
        notify.send_webhook(channel.address, note)
    else:
        notify.send_email(channel.address, channel.sender, list(channel.recipients), note)


@dataclass
class Delivery:
    notification_id: str
    channel: str
    event: str
    rule: str
    error: str | None  # None: delivered


def pending(conn: sa.Connection) -> list[tuple[sa.Row, sa.Row]]:
    """Every notification not yet delivered, oldest first, with its incident."""
    notes = conn.execute(sa.select(ALERT_NOTIFICATIONS).where(ALERT_NOTIFICATIONS.c.delivered_at_ms.is_(None))
                         .order_by(ALERT_NOTIFICATIONS.c.created_at_ms, ALERT_NOTIFICATIONS.c.event.desc())).all()
    if not notes:
        return []
    incidents = {row.incident_id: row for row in conn.execute(
        sa.select(ALERT_INCIDENTS).where(ALERT_INCIDENTS.c.incident_id.in_({n.incident_id for n in notes})))}
    return [(note, incidents[note.incident_id]) for note in notes]


def deliver(engine: sa.Engine, channels: dict[str, Channel], where: Callable[[str | None], dict[str, str]],
            clock: Callable[[], int]) -> list[Delivery]:
    """Send every queued notification, recording each attempt as it ends (a short write transaction each, so no
    lock is held while a receiver answers); `where(experiment_id)` gives the links."""
    with engine.connect() as conn:
        todo = pending(conn)
    deliveries = []
    for note, incident in todo:
        channel = channels.get(note.channel)
        try:
            if channel is None:
                raise notify.DeliveryError(f"channel {note.channel} is no longer in the rules file")
            if channel.off is not None:
                raise notify.DeliveryError(f"channel {note.channel} is off ({channel.off})")
            send(channel, message(note, incident, where(incident.experiment_id)))
            error = None
        except notify.DeliveryError as exc:
            error = str(exc)
        now = clock()
        with engine.begin() as conn:
            conn.execute(ALERT_NOTIFICATIONS.update()
                         .where(ALERT_NOTIFICATIONS.c.notification_id == note.notification_id)
                         .values(attempts=ALERT_NOTIFICATIONS.c.attempts + 1, last_attempt_at_ms=now,
                                 delivered_at_ms=now if error is None else None, last_error=error))
        deliveries.append(Delivery(note.notification_id, note.channel, note.event, incident.rule, error))
    return deliveries


@dataclass
class AlertRun:
    evaluations: list[Evaluation]
    changes: Changes
    deliveries: list[Delivery]
    open_incidents: list[sa.Row]


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def evaluate_and_notify(engine: sa.Engine, rules: RulesFile, source: str, where: Callable[[str | None], dict],
                        environments: list[str] = ()) -> AlertRun:
    """Judge the rules of `source`, open and resolve incidents, queue their notifications (one transaction),
    then deliver every queued notification, earlier failed ones too."""
    now = now_ms()
    with engine.begin() as conn:
        evaluations, warnings = evaluate(conn, rules.rules, now, source, environments)
        changes = record(conn, evaluations, rules, now, source)
        changes.warnings[:0] = warnings
    deliveries = deliver(engine, rules.channels, where, now_ms)
    with engine.connect() as conn:
        still_open = open_incidents(conn)
    return AlertRun(evaluations, changes, deliveries, still_open)
