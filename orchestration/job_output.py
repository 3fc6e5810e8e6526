"""How an `llmops` command shows the Dagster job it runs: one line per step as it ends, warnings as they happen, a
Results block from the assets' metadata, and the whole log (every Dagster event, library logs, stacks) in a file.

`--verbose` adds Dagster's own console logger. A failure ends with the failed step's own reason and the log's path.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import dagster as dg

from assets.vocabulary import NOTE

# Loggers of libraries that print to the terminal on their own (MLflow's store migrations, its tracing warnings):
# while a quiet command runs, their records go to the log file instead.
LIBRARY_LOGGERS = ("mlflow", "alembic", "dagster", "py.warnings")


def _metadata_value(metadata: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = metadata.get(key)
    return default if value is None else getattr(value, "value", value)


def _indented(markdown: str) -> str:
    return "\n".join(f"      {line}" for line in markdown.strip().splitlines())


# What each asset's materialization says in the Results block, from its metadata. One entry an asset; an asset not
# listed says nothing there, and any asset's `note` metadata is shown after its line.
def _alerts_line(what: str, m: Mapping[str, Any]) -> str:
    failed = _metadata_value(m, "notifications_failed", 0)
    return (f"{what}: {_metadata_value(m, 'firing', 0)} of {_metadata_value(m, 'judged', 0)} rule checks firing; "
            f"incidents: {_metadata_value(m, 'opened', 0)} opened, {_metadata_value(m, 'resolved', 0)} resolved, "
            f"{_metadata_value(m, 'open_incidents', 0)} open; notifications: "
            f"{_metadata_value(m, 'notifications_sent', 0)} sent"
            + (f", {failed} failed (retried next time)" if failed else "")
            + (" (see `llmops alerts`)" if _metadata_value(m, "open_incidents", 0) else ""))


RESULT_LINES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "traces": lambda m: (f"traces: {_metadata_value(m, 'changed_traces', 0)} new or changed, "
                         f"{_metadata_value(m, 'deleted_traces', 0)} deleted ({_metadata_value(m, 'mode')}); "
                         f"{_metadata_value(m, 'rows')} in the warehouse {_metadata_value(m, 'warehouse')}"),
    "root_causes": lambda m: (f"root causes: {_metadata_value(m, 'rows', 0)} dimension values ranked for "
                              f"{_metadata_value(m, 'outcomes', 0)} outcomes"),
    "insights_report": lambda m: f"report: {_metadata_value(m, 'report') or _metadata_value(m, 'path')}",
    "prompt_registry": lambda m: (f"prompt registry: {_metadata_value(m, 'new_versions', 0)} new versions of "
                                  f"{_metadata_value(m, 'prompts', 0)} prompts"),
    "prompt_evals": lambda m: f"evals of candidates {_metadata_value(m, 'candidate_versions', {})}",
    "prompt_production": lambda m: (f"production prompts ({_metadata_value(m, 'action')}, "
                                    f"{_metadata_value(m, 'changed', 0)} changed):\n"
                                    f"{_indented(_metadata_value(m, 'production', ''))}"),
    "agent_model": lambda m: (f"model: {_metadata_value(m, 'model')} version {_metadata_value(m, 'version')} "
                              f"({'new' if _metadata_value(m, 'new_version') else 'unchanged'})"),
    "agent_deployment": lambda m: (f"deployment: version {_metadata_value(m, 'model_version')} serves at "
                                   f"{_metadata_value(m, 'endpoint')} ({_metadata_value(m, 'environment')})"),
    "labeling_sessions": lambda m: f"labeling: {_metadata_value(m, 'traces_added', 0)} traces added to sessions",
    "alert_incidents": lambda m: _alerts_line("alerts", m),
    "endpoint_health": lambda m: _alerts_line(
        f"endpoint {_metadata_value(m, 'environment')} {'up' if _metadata_value(m, 'up') else 'DOWN'}"
        if _metadata_value(m, "environment") else "endpoint", m),
}


class _TerminalHandler(logging.Handler):
    """Echoes what a person watching wants: a line when a step ends, failed checks, warnings as they happen."""

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        meta = getattr(record, "dagster_meta", {}) or {}
        if event is None:
            message, step = meta.get("orig_message", record.getMessage()), meta.get("step_key") or "run"
            if message.startswith("Dependencies for step"):  # Dagster's words for a step it will not run
                click.echo(f"  skipped {step} (an upstream step failed)")
            elif record.levelno >= logging.WARNING:
                click.echo(f"  ! {step}: {message}", err=True)
            return
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            seconds = event.event_specific_data.duration_ms / 1000
            click.echo(f"  ok      {event.step_key} ({seconds:.1f} s)")
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            click.echo(f"  FAILED  {event.step_key}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                click.echo(f"  ! check {evaluation.asset_key.to_user_string()}/{evaluation.check_name} "
                           f"did not pass ({evaluation.severity.value})", err=True)


def _log_file(log_dir: str, job_name: str, run_id: str) -> Path:
    return Path(log_dir) / f"{job_name}-{run_id[:8]}.log"


def _file_handler(path: Path) -> logging.FileHandler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


@dg.logger({"log_dir": dg.Field(str)}, description="llmops CLI: step lines on the terminal, everything in a file.")
def cli_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("llmops.run")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    path = _log_file(init_context.logger_config["log_dir"], init_context.job_def.name, init_context.run_id)
    logger.addHandler(_file_handler(path))
    logger.addHandler(_TerminalHandler())
    return logger


@contextmanager
def _library_logs_to(path: Path, verbose: bool) -> Iterator[None]:
    """While the job runs, library log records go to the run's log file (and, verbose, also where they went)."""
    logging.captureWarnings(True)
    handler = _file_handler(path)
    configure_mlflow = "mlflow" not in sys.modules and "MLFLOW_CONFIGURE_LOGGING" not in os.environ
    if configure_mlflow:
        # A step that imports MLflow would replace its logger's handlers with its own stderr one, mid-run: MLflow
        # is told not to, and its logger is set up here the way MLflow does it (INFO, to stderr).
        os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
        logging.getLogger("mlflow").setLevel(logging.INFO)
        logging.getLogger("mlflow").handlers = [logging.StreamHandler()]
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in LIBRARY_LOGGERS}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not verbose:
            logger.handlers.clear()
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
        handler.close()
        if configure_mlflow:
            os.environ.pop("MLFLOW_CONFIGURE_LOGGING", None)


@dataclass
class JobOutcome:
    success: bool
    run_id: str
    log_path: Path
    results: list[str]
    failure: str | None


def run_job(job: dg.JobDefinition, instance: dg.DagsterInstance, run_config: dict, tags: dict[str, str],
            log_dir: str, verbose: bool) -> JobOutcome:
    """Run `job` in this process on `instance`, showing it as the module docstring says."""
    run_id = str(uuid.uuid4())  # Dagster's run id form; chosen here, so it names the log file before the run
    loggers = {"llmops": {"config": {"log_dir": log_dir}}}
    if verbose:
        loggers["console"] = {"config": {"log_level": "DEBUG"}}
    job = job.with_logger_defs({"llmops": cli_logger, "console": dg.colored_console_logger})
    log_path = _log_file(log_dir, job.name, run_id)
    with _library_logs_to(log_path, verbose):
        result = job.execute_in_process(instance=instance, run_config={**run_config, "loggers": loggers},
                                        raise_on_error=False, tags=tags, run_id=run_id)
    for handler in logging.getLogger("llmops.run").handlers:  # cli_logger's: the run's log file is complete
        handler.close()
    return JobOutcome(result.success, result.run_id, log_path, result_lines(result.all_events),
                      None if result.success else failure_reason(result.all_events))


def result_lines(events: list) -> list[str]:
    """The Results block: one entry of RESULT_LINES per materialized asset that has one, then its note."""
    lines = []
    for event in events:
        if not event.is_step_materialization:
            continue
        materialization = event.event_specific_data.materialization
        key, metadata = materialization.asset_key.to_user_string(), materialization.metadata
        if key in RESULT_LINES:
            lines.append(RESULT_LINES[key](metadata))
        if note := _metadata_value(metadata, NOTE):
            lines.append(f"{key}: {note}")
    return lines


def failure_reason(events: list) -> str:
    """The first failed step's own words (a `dg.Failure` description or the error's message), else the run's."""
    for event in events:
        if event.is_step_failure and (data := event.step_failure_data):
            if data.user_failure_data and data.user_failure_data.description:
                return f"{event.step_key}: {data.user_failure_data.description}"
            if data.error:
                return f"{event.step_key}: {data.error.message.strip()}"
    failure = next((e for e in events if e.is_failure), None)
    return failure.message if failure else "see the run log"
