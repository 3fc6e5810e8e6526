"""Reading alert incidents (no Dagster): what `GET /api/alerts/incidents`, `llmops alerts` and the insights
report's Alerts section show.

Incidents and their notifications live in the warehouse tables of migration 9 (`alert_incidents`,
`alert_notifications`; assets/alerts/incidents.py writes them). An incident is open while `resolved_at_ms` is null;
a notification is delivered once `delivered_at_ms` is set, pending until then (its failed attempts counted, with the
last error). A warehouse whose schema predates migration 9 has no incidents. Values are bound parameters.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from resources.warehouse import has_table

ALERT_INCIDENTS = sa.table("alert_incidents", *(sa.column(name) for name in (
    "incident_id", "rule", "metric", "scope", "experiment_id", "scope_name", "opened_at_ms", "resolved_at_ms",
    "window_s", "direction", "threshold", "baseline", "value", "sample_count", "condition", "root_causes_json",
    "last_value", "last_evaluated_at_ms")))
ALERT_NOTIFICATIONS = sa.table("alert_notifications", *(sa.column(name) for name in (
    "notification_id", "incident_id", "event", "channel", "created_at_ms", "attempts", "last_attempt_at_ms",
    "delivered_at_ms", "last_error")))

OPEN, RESOLVED, ALL = "open", "resolved", "all"
States = Literal["open", "resolved", "all"]
MAX_ERROR = 200  # characters of a notification's last error shown in words


class RootCause(BaseModel):
    """A dimension value that went with the rule's outcome in the window when the incident opened."""

    description: str = Field(description="In words, e.g. 'tool web.fetch failed'.")
    dimension: str = Field(description="The dimension's name, e.g. 'tools.web.fetch'.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    npmi: float
    count: int = Field(description="Traces in the window with the dimension value.")
    intersection_count: int = Field(description="Of those, traces with the outcome too.")
    mlflow_filter: str | None = Field(default=None, description="The same traces as an MLflow search filter.")


class NotificationState(BaseModel):
    channel: str
    event: str = Field(description="opened | resolved")
    delivered_at_ms: int | None = Field(description="Null while pending.")
    attempts: int
    last_error: str | None


class Incident(BaseModel):
    incident_id: str
    rule: str
    metric: str
    scope: str = Field(description="The experiment id, or `endpoint:<environment>`.")
    experiment_id: str | None = Field(description="Null for endpoint rules.")
    scope_name: str = Field(description="The experiment's name, or the environment.")
    opened_at_ms: int
    resolved_at_ms: int | None = Field(description="Null while open.")
    window_s: int
    direction: str = Field(description="above | below")
    threshold: float
    baseline: float | None
    value: float = Field(description="The metric when the incident opened.")
    sample_count: int
    condition: str = Field(description="In words, e.g. 'error_rate 0.31 > 0.05 over 1h'.")
    root_causes: list[RootCause] = Field(description="The top root causes in the window at opening, best first.")
    last_value: float | None = Field(description="The latest evaluation's value.")
    last_evaluated_at_ms: int
    state: Literal["open", "resolved"]
    notifications: list[NotificationState] = Field(description="Oldest first.")


class IncidentsResponse(BaseModel):
    incidents: list[Incident] = Field(description="Newest opened first.")


def list_incidents(conn: sa.Connection, *, state: States = "open", experiment_ids: list[str] | None = None,
                   limit: int = 100) -> list[Incident]:
    """At most `limit` incidents in `state`, newest opened first, each with its notifications; with
    `experiment_ids`, only those of these experiments (never an endpoint's). [] before migration 9."""
    if state not in (OPEN, RESOLVED, ALL):
        raise ValueError(f"state must be 'open', 'resolved' or 'all', not {state!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not has_table(conn, ALERT_INCIDENTS.name):  # a warehouse from before migration 9
        return []
    t = ALERT_INCIDENTS
    query = sa.select(t)
    if state == OPEN:
        query = query.where(t.c.resolved_at_ms.is_(None))
    elif state == RESOLVED:
        query = query.where(t.c.resolved_at_ms.is_not(None))
    if experiment_ids is not None:
        query = query.where(t.c.experiment_id.in_(experiment_ids))
    rows = conn.execute(query.order_by(t.c.opened_at_ms.desc(), t.c.incident_id.desc()).limit(limit)).all()
    if not rows:
        return []
    n = ALERT_NOTIFICATIONS
    notifications: dict[str, list[NotificationState]] = {row.incident_id: [] for row in rows}
    for note in conn.execute(
            sa.select(n.c.incident_id, n.c.channel, n.c.event, n.c.delivered_at_ms, n.c.attempts, n.c.last_error)
            .where(n.c.incident_id.in_(list(notifications)))
            .order_by(n.c.created_at_ms, n.c.event.desc(), n.c.channel, n.c.notification_id)):  # opened first
        notifications[note.incident_id].append(NotificationState(
            channel=note.channel, event=note.event, delivered_at_ms=note.delivered_at_ms, attempts=note.attempts,
            last_error=note.last_error))
    incidents = []
    for row in rows:
        fields = row._asdict()
        causes = json.loads(fields.pop("root_causes_json") or "[]")
        incidents.append(Incident(
            **fields, root_causes=[RootCause.model_validate(c) for c in causes],
            state=OPEN if row.resolved_at_ms is None else RESOLVED, notifications=notifications[row.incident_id]))
    return incidents


# --- in words: shared by `llmops alerts` and the report --------------------------------------------------------------


def utc_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def open_span(incident: Incident) -> str:
    """'since 2026-12-02 13:05 UTC', or for a resolved one '2026-12-02 13:05 → 14:10 UTC' (the end's date too
    when it is another day)."""
    if incident.resolved_at_ms is None:
        return f"since {utc_time(incident.opened_at_ms)}"
    opened, resolved = utc_time(incident.opened_at_ms), utc_time(incident.resolved_at_ms)
    same_day = opened[:10] == resolved[:10]
    return f"{opened.removesuffix(' UTC')} → {resolved[11:] if same_day else resolved}"


def cause_text(cause: RootCause) -> str:
    """'tool web.fetch failed (NPMI 0.62, 9 of 12)': of the 12 traces with it, 9 had the outcome."""
    return f"{cause.description} (NPMI {cause.npmi:.2f}, {cause.intersection_count} of {cause.count})"


def notification_text(note: NotificationState) -> str:
    """'notified: oncall (delivered)' or 'notified: oncall (pending: connection refused, 2 attempts)'; a
    resolution's notification says so ('notified of the resolution: ...'). The error on one line, cut short."""
    if note.delivered_at_ms is not None:
        status = "delivered"
    else:
        details = [" ".join(note.last_error.split())[:MAX_ERROR]] if note.last_error else []
        if note.attempts:
            details.append(f"{note.attempts} attempt{'s' if note.attempts != 1 else ''}")
        status = "pending" + (": " + ", ".join(details) if details else "")
    return f"notified{' of the resolution' if note.event == 'resolved' else ''}: {note.channel} ({status})"
