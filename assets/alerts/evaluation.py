"""Evaluating alert rules over the warehouse: each rule's value, threshold and state per experiment (or endpoint)
at one moment (no Dagster).

A rule judges the window ending now. With `above_baseline`/`below_baseline` its threshold is that ratio times the
baseline: the same window at this time of day on each of the last `baseline_days` days, pooled. Below the rule's
least count (traces, or endpoint checks) it judges nothing: a quiet night with 2 traces neither opens nor
resolves an incident.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from assets.alerts.metrics import METRICS, Ranges, measure, production_experiments
from assets.alerts.rules import AlertRule
from assets.insights.queries import EXPERIMENTS

DAY_MS = 86_400_000
ENDPOINT_SCOPE = "endpoint:"
FIRING, OK, TOO_FEW, NO_BASELINE = "firing", "ok", "too_few", "no_baseline"


def crosses(rule: AlertRule, value: float, threshold: float) -> bool:
    return value > threshold if rule.direction == "above" else value < threshold


@dataclass(frozen=True)
class Evaluation:
    rule: AlertRule
    scope: str  # the experiment id, or endpoint:<environment>
    experiment_id: str | None
    scope_name: str  # the experiment's name, or the environment
    value: float | None
    count: int
    threshold: float | None
    baseline: float | None
    state: str  # FIRING | OK | TOO_FEW | NO_BASELINE

    @property
    def condition(self) -> str:
        """In words, the sign as the value stands: "error_rate 31.0 % > 5.0 % over 1h (2 × baseline 2.5 %)",
        "latency_p95_ms 6,760 ms ≤ 60,000 ms over 1h"."""
        metric = METRICS[self.rule.metric]
        value = "no value" if self.value is None else metric.shown(self.value)
        if self.threshold is None:
            return f"{self.rule.metric} {value} over {self.rule.window}: no baseline yet"
        sign = {("above", True): ">", ("above", False): "≤", ("below", True): "<", ("below", False): "≥"}[
            (self.rule.direction, self.value is not None and crosses(self.rule, self.value, self.threshold))]
        baseline = (f" ({self.rule.baseline_ratio:g} × baseline {metric.shown(self.baseline)})"
                    if self.baseline is not None else "")
        return f"{self.rule.metric} {value} {sign} {metric.shown(self.threshold)} over {self.rule.window}{baseline}"


def _experiment_names(conn: sa.Connection) -> dict[str, str]:
    return dict(conn.execute(sa.select(EXPERIMENTS.c.experiment_id, EXPERIMENTS.c.name)).all())


def rule_scopes(conn: sa.Connection, rule: AlertRule, environments: list[str]) -> tuple[list[tuple], list[str]]:
    """[(scope, experiment id, name)] the rule judges, and warnings (an experiment it names that is unknown)."""
    if METRICS[rule.metric].source == "endpoint":
        return [(f"{ENDPOINT_SCOPE}{env}", None, env) for env in environments], []
    names = _experiment_names(conn)
    if rule.experiments is None:
        return [(eid, eid, names.get(eid, eid)) for eid in production_experiments(conn)], []
    ids = {name: eid for eid, name in names.items()}
    scopes, warnings = [], []
    for wanted in rule.experiments:
        eid = wanted if wanted in names else ids.get(wanted)
        if eid is None:
            warnings.append(f"rule {rule.name}: no experiment {wanted!r} in the warehouse")
        else:
            scopes.append((eid, eid, names[eid]))
    return scopes, warnings


def judge(conn: sa.Connection, rule: AlertRule, scope: tuple, now_ms: int) -> Evaluation:
    scope_id, experiment_id, name = scope
    measured = scope_id.removeprefix(ENDPOINT_SCOPE)
    window: Ranges = [(now_ms - rule.window_s * 1000, now_ms)]
    value, count = measure(conn, rule, measured, window)
    threshold, baseline = rule.above if rule.above is not None else rule.below, None
    if rule.baseline_ratio is not None:
        past = [(start - k * DAY_MS, end - k * DAY_MS) for k in range(1, rule.baseline_days + 1)
                for start, end in window]
        baseline, past_count = measure(conn, rule, measured, past)
        if baseline is None or past_count < rule.least_count:
            baseline = None
        threshold = None if baseline is None else rule.baseline_ratio * baseline
    if value is None or count < rule.least_count:
        state = TOO_FEW
    elif threshold is None:
        state = NO_BASELINE
    else:
        state = FIRING if crosses(rule, value, threshold) else OK
    return Evaluation(rule, scope_id, experiment_id, name, value, count, threshold, baseline, state)


def evaluate(conn: sa.Connection, rules: list[AlertRule], now_ms: int, source: str,
             environments: list[str] = ()) -> tuple[list[Evaluation], list[str]]:
    """Every rule of `source` ("traces" or "endpoint") judged now, per scope; and warnings."""
    evaluations, warnings = [], []
    for rule in rules:
        if METRICS[rule.metric].source != source:
            continue
        scopes, found = rule_scopes(conn, rule, list(environments))
        warnings += found
        evaluations += [judge(conn, rule, scope, now_ms) for scope in scopes]
    return evaluations, warnings
