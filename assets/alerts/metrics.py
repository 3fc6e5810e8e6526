"""What an alert rule can watch: one registry, `METRICS` (like MLflow's TRACES_METRICS_CONFIGS), read by the rules
file's validation, the evaluation, the root causes and the words of a notification (no Dagster).

Each metric says its source (production traces of an experiment, or the endpoint's health checks), how it is
measured over time windows, the least samples it needs by default, how its values read, and the outcome whose
root causes an incident names (None: a total such as cost is no per-trace outcome).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa

from assets.insights.queries import ASSESSMENTS, TRACES
from assets.insights.registry import AssessmentKind, Dimension, production, selects

if TYPE_CHECKING:
    from assets.alerts.rules import AlertRule

ENDPOINT_CHECKS = sa.table("endpoint_checks", sa.column("environment"), sa.column("checked_at_ms"),
                           sa.column("version"), sa.column("up"), sa.column("latency_ms"), sa.column("reason"))
Ranges = list[tuple[int, int]]  # [start, end) epoch ms


@dataclass(frozen=True)
class AlertMetric:
    name: str
    description: str
    source: Literal["traces", "endpoint"]
    # (rule) -> the aggregate over the window's rows of the source table; None over no rows
    aggregate: Callable[[AlertRule], sa.ColumnElement]
    min_count: int  # least samples in the window, unless the rule says
    shown: Callable[[float], str]  # a value in words
    outcome: Callable[[AlertRule, float], Dimension | None] = lambda _rule, _threshold: None
    needs_feedback: bool = False  # feedback_rate: the rule names the feedback and the value counted


def _share(part: sa.ColumnElement[bool]) -> sa.ColumnElement:
    return sa.cast(sa.func.count().filter(part), sa.Double) / sa.func.nullif(sa.func.count(), 0)


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _latency(fraction: float) -> AlertMetric:
    label = f"p{round(fraction * 100)}"
    return AlertMetric(
        name=f"latency_{label}_ms", description=f"The {label} latency of the window's traces, in ms.",
        source="traces", aggregate=lambda _rule: sa.func.quantile_cont(TRACES.c.execution_time_ms, fraction),
        min_count=10, shown=lambda v: f"{v:,.0f} ms",
        outcome=lambda rule, threshold: Dimension(name="latency", parameters={
            "threshold": threshold, "operator": ">" if rule.direction == "above" else "<"}))


def _feedback_traces(rule: AlertRule) -> sa.CompoundSelect:
    """The traces the rule's feedback is about (valid feedback of that name, also session-scoped)."""
    return AssessmentKind.about([], ASSESSMENTS.c.name == rule.feedback)


def _feedback_outcome(rule: AlertRule) -> Dimension:
    return Dimension(name=f"assessment.{rule.feedback}", parameters={"value": rule.value})


METRICS: dict[str, AlertMetric] = {metric.name: metric for metric in (
    AlertMetric(name="error_rate", description="The share of the window's traces with status ERROR.",
                source="traces", aggregate=lambda _rule: _share(TRACES.c.status == "ERROR"), min_count=10,
                shown=_percent,
                outcome=lambda _rule, _threshold: Dimension(name="status", parameters={"value": "ERROR"})),
    _latency(0.5),
    _latency(0.95),
    _latency(0.99),
    AlertMetric(name="trace_count", description="How many traces the window has.", source="traces",
                aggregate=lambda _rule: sa.func.count(), min_count=0, shown=lambda v: f"{v:,.0f} traces"),
    AlertMetric(name="cost_usd", description="The window's total cost (USD, MLflow's cost of the traces' LLM "
                "calls).", source="traces", aggregate=lambda _rule: sa.func.coalesce(sa.func.sum(TRACES.c.total_cost), 0),
                min_count=0, shown=lambda v: f"{v:,.2f} USD"),
    AlertMetric(name="total_tokens", description="The window's total tokens.", source="traces",
                aggregate=lambda _rule: sa.func.coalesce(sa.func.sum(TRACES.c.total_tokens), 0), min_count=0,
                shown=lambda v: f"{v:,.0f} tokens"),
    AlertMetric(name="feedback_rate", description="Of the window's traces with feedback `feedback`, the share "
                "whose value is `value` (e.g. user_thumbs = false).", source="traces",
                aggregate=lambda rule: _share(selects(_feedback_outcome(rule))),
                min_count=5, shown=_percent, outcome=lambda rule, _threshold: _feedback_outcome(rule),
                needs_feedback=True),
    AlertMetric(name="endpoint_failure_rate", description="The share of the window's health checks that found "
                "the deployed endpoint down.", source="endpoint",
                aggregate=lambda _rule: _share(sa.not_(ENDPOINT_CHECKS.c.up)), min_count=1, shown=_percent),
)}


def _in_ranges(column: sa.ColumnElement, ranges: Ranges) -> sa.ColumnElement[bool]:
    return sa.or_(*(sa.and_(column >= start, column < end) for start, end in ranges))


def measure(conn: sa.Connection, rule: AlertRule, scope: str, ranges: Ranges) -> tuple[float | None, int]:
    """The rule's metric over the time `ranges` of `scope` (an experiment id, or the endpoint's environment):
    (value, samples). Production traces only; feedback_rate counts the traces that have the feedback."""
    metric = METRICS[rule.metric]
    if metric.source == "endpoint":
        where = [ENDPOINT_CHECKS.c.environment == scope, _in_ranges(ENDPOINT_CHECKS.c.checked_at_ms, ranges)]
        table = ENDPOINT_CHECKS
    else:
        where = [TRACES.c.experiment_id == scope, _in_ranges(TRACES.c.timestamp_ms, ranges),
                 production()]
        if metric.needs_feedback:
            where.append(TRACES.c.trace_id.in_(_feedback_traces(rule)))
        table = TRACES
    value, count = conn.execute(sa.select(metric.aggregate(rule), sa.func.count()).select_from(table)
                                .where(*where)).one()
    return (None if value is None else float(value)), count


def production_experiments(conn: sa.Connection) -> list[str]:
    """The experiments with production traces (not only mlflow.genai.evaluate's), in id order."""
    return list(conn.execute(sa.select(TRACES.c.experiment_id).distinct()
                             .where(production())
                             .order_by(TRACES.c.experiment_id)).scalars())

