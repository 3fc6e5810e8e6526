"""Schedules: the warehouse, insights and alerts every hour, the evals every day, the endpoint's health every 5
minutes; and the automation-condition sensor that refreshes the insights after an extract launched on its own
(e.g. `dagster asset materialize --select group:traces`). Built when the definitions load, so their times (cron
strings from the environment, UTC) and whether they start with the daemon (LLMOPS_AUTOMATION) are read then, not
at import."""

from __future__ import annotations

import dagster as dg

from orchestration.jobs import endpoint_check_job, evals_job, warehouse_refresh_job
from resources.settings import (
    DEFAULT_EVALS_CRON,
    DEFAULT_HEALTH_CRON,
    DEFAULT_REFRESH_CRON,
    LLMOPS_AUTOMATION,
    LLMOPS_EVALS_CRON,
    LLMOPS_HEALTH_CRON,
    LLMOPS_REFRESH_CRON,
    checked,
)


def automation_on() -> bool:
    return (checked(LLMOPS_AUTOMATION) or "on").lower() == "on"


def _schedule(name: str, job, variable: str, default_cron: str, description: str,
              running: bool) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=name, job=job, cron_schedule=checked(variable) or default_cron, execution_timezone="UTC",
        description=description,
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED)


def build_schedules(running: bool) -> list[dg.ScheduleDefinition]:
    return [
        _schedule("warehouse_refresh_hourly", warehouse_refresh_job, LLMOPS_REFRESH_CRON, DEFAULT_REFRESH_CRON,
                  "Copies new and changed traces into the warehouse and refreshes the insights "
                  "(LLMOPS_REFRESH_CRON).", running),
        _schedule("evals_daily", evals_job, LLMOPS_EVALS_CRON, DEFAULT_EVALS_CRON,
                  "Evaluates the candidate and production prompts (LLMOPS_EVALS_CRON); promotes nothing.", running),
        _schedule("endpoint_health_check", endpoint_check_job, LLMOPS_HEALTH_CRON, DEFAULT_HEALTH_CRON,
                  "Pings the deployed agent and judges the endpoint alert rules (LLMOPS_HEALTH_CRON).", running),
    ]


def build_automation_sensor(running: bool) -> dg.AutomationConditionSensorDefinition:
    """Dagster's automation-condition sensor, made explicit so LLMOPS_AUTOMATION starts it (Dagster's implicit one
    starts stopped): the insights assets are eager, so an extract run on its own is followed by their refresh."""
    return dg.AutomationConditionSensorDefinition(
        "insights_automation_sensor", target=dg.AssetSelection.groups("insights", "alerts"), minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
        description="Materializes the insights assets and alert_incidents (eager automation condition) after the "
        "traces group changed in a run that did not include them.",
    )
