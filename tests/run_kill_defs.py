"""Definitions for the run-monitoring tests: a run that holds the `duckdb_write` pool until it is killed (its
retry finishes at once), and another writer that needs the same pool."""

import os
import time
from pathlib import Path

import dagster as dg

MARKERS = Path(os.environ.get("LLMOPS_TEST_MARKERS", "."))


@dg.op(pool="duckdb_write")
def hold_the_pool(context: dg.OpExecutionContext) -> None:
    retry = context.run.tags.get("dagster/parent_run_id") is not None
    (MARKERS / ("retry" if retry else "first")).write_text(str(os.getpid()))
    if not retry:
        time.sleep(600)  # until the test kills this run's worker


@dg.op(pool="duckdb_write")
def write_next(context: dg.OpExecutionContext) -> None:
    (MARKERS / "next").write_text(context.run_id)


# In-process executor: the op runs in the run worker itself, so killing the op's process kills the worker.
@dg.job(executor_def=dg.in_process_executor, tags={"dagster/max_retries": "1"})
def hold_job() -> None:
    hold_the_pool()


@dg.job(executor_def=dg.in_process_executor)
def next_job() -> None:
    write_next()


defs = dg.Definitions(jobs=[hold_job, next_job])
