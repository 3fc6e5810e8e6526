"""Schedules: the warehouse and insights every hour, the evals every day. Like the sensors, they start with the
daemon unless LLMOPS_AUTOMATION=off; their times are cron strings from the environment (UTC)."""

from __future__ import annotations

import os

import dagster as dg

from orchestration.jobs import evals_job, warehouse_refresh_job
from resources.settings import (
    DEFAULT_EVALS_CRON,
    DEFAULT_REFRESH_CRON,
    LLMOPS_AUTOMATION,
    LLMOPS_EVALS_CRON,
    LLMOPS_REFRESH_CRON,
)


def automation_on() -> bool:
    value = os.environ.get(LLMOPS_AUTOMATION, "").strip().lower() or "on"
    if value not in ("on", "off"):
        raise ValueError(f"{LLMOPS_AUTOMATION} must be 'on' or 'off', not {value!r}")
    return value == "on"


def _schedule(name: str, job, variable: str, default_cron: str, description: str) -> dg.ScheduleDefinition:
    cron = os.environ.get(variable, "").strip() or default_cron
    try:
        return dg.ScheduleDefinition(
            name=name, job=job, cron_schedule=cron, execution_timezone="UTC", description=description,
            default_status=dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED)
    except dg.DagsterInvalidDefinitionError:
        raise ValueError(f"{variable} must be a 5-field cron string such as {default_cron!r}, not {cron!r}") from None


SCHEDULES = [
    _schedule("warehouse_refresh_hourly", warehouse_refresh_job, LLMOPS_REFRESH_CRON, DEFAULT_REFRESH_CRON,
              "Copies new and changed traces into the warehouse and refreshes the insights (LLMOPS_REFRESH_CRON)."),
    _schedule("evals_daily", evals_job, LLMOPS_EVALS_CRON, DEFAULT_EVALS_CRON,
              "Evaluates the candidate and production prompts (LLMOPS_EVALS_CRON); promotes nothing."),
]
