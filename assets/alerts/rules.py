"""The alert rules file (`alerts/rules.yaml`, or the file `LLMOPS_ALERT_RULES` names): channels to notify and
rules over the warehouse's metrics. Read into pydantic models; every problem is reported as file:line: reason.

Channel addresses may name environment variables (`${LLMOPS_ONCALL_WEBHOOK}`): a webhook URL or an SMTP password
is a secret, so it stays in the environment and is never logged, stored or shown. A channel whose variable is
unset is off (the default file's channels are), and its rules still open incidents.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator,
                      model_validator)

from assets.alerts.metrics import METRICS
from assets.yaml_files import InvalidFilesError, Problem, line_of, read_model
from resources import notify, settings

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CONDITIONS = ("above", "below", "above_baseline", "below_baseline")


def duration_s(text: str) -> int:
    """`30s`, `5m`, `1h`, `7d` in seconds; a ValueError says what is accepted."""
    if not (match := DURATION.match(str(text))) or int(match[1]) == 0:
        raise ValueError(f"must be a duration such as 30s, 15m, 1h or 1d, not {text!r}")
    return int(match[1]) * SECONDS[match[2]]


class EmailSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    to: list[StrictStr] = Field(min_length=1, description="Recipients.")
    sender: StrictStr = Field(alias="from", description="The From address.")
    smtp: StrictStr = Field(description="smtp://[user[:password]@]host[:port], smtp+starttls://… or smtps://…; "
                            "usually ${VARIABLE}.")


class ChannelSpec(BaseModel):
    """Exactly one of `webhook` (Slack-compatible JSON POST) and `email`."""

    model_config = ConfigDict(extra="forbid")
    webhook: StrictStr | None = Field(default=None, description="The URL to POST to; usually ${VARIABLE}.")
    email: EmailSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ChannelSpec:
        if (self.webhook is None) == (self.email is None):
            raise ValueError("give exactly one of webhook and email")
        return self


class AlertRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    metric: str = Field(description="One of assets/alerts/metrics.py METRICS (README 'Alerts').")
    window: str = Field(description="How far back the metric looks: 30s, 15m, 1h, 1d.")
    above: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    below: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    above_baseline: float | None = Field(default=None, strict=True, allow_inf_nan=False, gt=0,
                                         description="Fires above this many times the baseline.")
    below_baseline: float | None = Field(default=None, strict=True, allow_inf_nan=False, gt=0,
                                         description="Fires below this many times the baseline.")
    baseline_days: int = Field(default=7, ge=1, le=28, strict=True,
                               description="The baseline: the same window at this time of day on each of these "
                               "many past days, pooled.")
    min_count: int | None = Field(default=None, ge=0, strict=True,
                                  description="Least traces (endpoint checks) in the window for the rule to judge "
                                  "it; default the metric's.")
    experiments: list[StrictStr] | None = Field(default=None, min_length=1,
                                                description="Experiment ids or names; default every experiment "
                                                "with production traces.")
    feedback: StrictStr | None = Field(default=None, description="feedback_rate: the feedback's name.")
    value: StrictBool | StrictInt | StrictFloat | StrictStr | None = Field(
        default=None, description="feedback_rate: the value counted (false, 'no', 1).")
    min_support: int = Field(default=3, ge=1, strict=True,
                             description="Least traces in the window with both the outcome and a dimension value "
                             "for the value to be named a root cause.")
    notify: list[StrictStr] = Field(default=[], description="Channel names.")
    description: StrictStr | None = Field(default=None, description="Sent with the notification.")

    @field_validator("window")
    @classmethod
    def _window(cls, window: str) -> str:
        duration_s(window)
        return window

    @field_validator("metric")
    @classmethod
    def _metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
        return metric

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        given = [name for name in CONDITIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(CONDITIONS)}, not {given or 'none'}")
        metric = METRICS[self.metric]
        if metric.needs_feedback and (self.feedback is None or self.value is None):
            raise ValueError(f"metric {self.metric} needs feedback (its name) and value (the one counted)")
        if not metric.needs_feedback and (self.feedback is not None or self.value is not None):
            raise ValueError(f"feedback and value are for feedback_rate, not {self.metric}")
        if self.baseline_ratio is not None and self.window_s > 86400:
            raise ValueError("a baseline rule's window is at most 1d (its baseline repeats it day by day)")
        if metric.source == "endpoint" and self.experiments is not None:
            raise ValueError(f"metric {self.metric} is about the deployed endpoint, not experiments")
        return self

    @property
    def window_s(self) -> int:
        return duration_s(self.window)

    @property
    def direction(self) -> str:
        return "above" if self.above is not None or self.above_baseline is not None else "below"

    @property
    def baseline_ratio(self) -> float | None:
        return self.above_baseline if self.above_baseline is not None else self.below_baseline

    @property
    def least_count(self) -> int:
        return METRICS[self.metric].min_count if self.min_count is None else self.min_count


class AlertRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: dict[str, ChannelSpec] = {}
    rules: list[AlertRule] = []


class AlertRulesFileError(InvalidFilesError):
    def __init__(self, problems: list[Problem]):
        super().__init__("Invalid alert rules file:", problems)


@dataclass(frozen=True)
class Channel:
    """A channel as the environment resolves it: `off` says why it sends nothing (None: it sends)."""

    name: str
    kind: str  # webhook | email
    address: str  # the resolved URL: a secret, never shown (`shown` is)
    shown: str
    off: str | None = None
    sender: str = ""
    recipients: tuple[str, ...] = ()


def rules_path() -> Path:
    return Path(os.environ.get(settings.LLMOPS_ALERT_RULES) or settings.DEFAULT_ALERT_RULES_FILE)


def _resolve(text: str) -> tuple[str, list[str]]:
    """`text` with each ${VARIABLE} replaced by its value; the variables that are unset."""
    unset = [name for name in VARIABLE.findall(text) if not os.environ.get(name, "").strip()]
    return VARIABLE.sub(lambda m: os.environ.get(m[1], "").strip(), text), unset


def resolve_channel(name: str, spec: ChannelSpec) -> tuple[Channel, str | None]:
    """The channel with its address resolved, and the problem with that address (None when fine or off)."""
    raw = spec.webhook if spec.webhook is not None else spec.email.smtp
    address, unset = _resolve(raw)
    kind = "webhook" if spec.webhook is not None else "email"
    where = " and ".join(f"${{{v}}}" for v in VARIABLE.findall(raw)) or "the address in the file"
    if unset:
        return Channel(name, kind, "", f"{kind} (off)", off=f"{', '.join(unset)} not set"), None
    check, describe = ((notify.check_webhook_url, notify.describe_webhook) if kind == "webhook"
                       else (notify.check_smtp_url, notify.describe_smtp))
    if problem := check(address):
        return Channel(name, kind, "", kind, off=problem), f"{where}: {problem}"
    email = spec.email
    return Channel(name, kind, address, describe(address), sender=email.sender if email else "",
                   recipients=tuple(email.to) if email else ()), None


@dataclass(frozen=True)
class RulesFile:
    path: Path
    rules: list[AlertRule]
    channels: dict[str, Channel]


def load_rules(path: Path | None = None) -> RulesFile:
    """The rules file at `path` (default: LLMOPS_ALERT_RULES, else alerts/rules.yaml), its channels resolved;
    every problem (also a rule naming an unknown channel, a duplicate rule, a malformed address) names file:line."""
    path = Path(path or rules_path())
    shown = str(path)
    if not path.is_file():
        raise AlertRulesFileError([Problem(shown, 0, f"alert rules file not found (set {settings.LLMOPS_ALERT_RULES})")])
    parsed, node, problems = read_model(path, shown, AlertRules)
    if problems:
        raise AlertRulesFileError(problems)
    channels = {}
    for name, spec in parsed.channels.items():
        channels[name], problem = resolve_channel(name, spec)
        if problem:
            field = "webhook" if spec.webhook is not None else "email"
            problems.append(Problem(shown, line_of(node, ("channels", name, field)), f"channels.{name}: {problem}"))
    seen: set[str] = set()
    for index, rule in enumerate(parsed.rules):
        if rule.name in seen:
            problems.append(Problem(shown, line_of(node, ("rules", index, "name")),
                                    f"rules.{index}.name: {rule.name!r} is used by an earlier rule"))
        seen.add(rule.name)
        for position, channel in enumerate(rule.notify):
            if channel not in channels:
                problems.append(Problem(shown, line_of(node, ("rules", index, "notify", position)),
                                        f"rules.{index}.notify: no channel {channel!r} "
                                        f"(channels: {', '.join(channels) or 'none'})"))
    if problems:
        raise AlertRulesFileError(problems)
    return RulesFile(path, parsed.rules, channels)
