"""What every trace source gives the extractor: MLflow's SQL tables with these columns, read with transient
failures retried within a time budget, or a SourceError saying why it cannot.

Both readers (`trace_sources.SqlTrackingStore`, `api_trace_source.ApiTrackingStore`) depend on this module and
not on each other; it imports neither MLflow nor anything slow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import duckdb

T = TypeVar("T")

# The columns read from each MLflow table; the benchmark's bare scan reads exactly these.
RAW_COLUMNS: dict[str, tuple[str, ...]] = {
    "trace_info": (
        "request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status", "client_request_id",
        "request_preview", "response_preview", "trace_name", "session_id", "input_tokens", "output_tokens",
        "total_tokens", "input_cost", "output_cost", "total_cost", "db_payload_generation", "cache_read_input_tokens",
        "cache_creation_input_tokens", "cache_creation_input_tokens_above_1hr",
    ),
    "spans": (
        "trace_id", "experiment_id", "span_id", "parent_span_id", "name", "type", "status",
        "start_time_unix_nano", "end_time_unix_nano", "content", "input_cost", "output_cost", "total_cost", "model_name",
        "model_provider",
    ),
    "trace_tags": ("request_id", "key", "value"),
    "trace_request_metadata": ("request_id", "key", "value"),
    "assessments": (
        "assessment_id", "trace_id", "experiment_id", "name", "assessment_type", "value", "error",
        "created_timestamp", "last_updated_timestamp", "source_type", "source_id", "run_id", "span_id",
        "rationale", "overrides", "valid", "assessment_metadata",
    ),
    "experiments": ("experiment_id", "name", "lifecycle_stage", "creation_time", "last_update_time"),
    "entity_associations": ("source_type", "source_id", "destination_type", "destination_id", "created_time"),
}
TRACE_ID_COLUMN = {
    "trace_info": "request_id",
    "spans": "trace_id",
    "trace_tags": "request_id",
    "trace_request_metadata": "request_id",
    "assessments": "trace_id",
    "entity_associations": "source_id",
}


class SourceError(RuntimeError):
    """The tracking store cannot be read; the message names the (masked) URI and what to do."""


class TraceSource(Protocol):
    uri: str
    label: str
    # How long `attach` is retried when it fails (0: the source retries its own calls).
    attach_retry_s: float
    progress: Callable[[str], None]
    warn: Callable[[str], None]  # retries: shown on the terminal by a quiet `llmops`

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make the source readable from `con`."""

    def relation(self, con: duckdb.DuckDBPyConnection, table: str, only_changed: bool) -> str:
        """A FROM-clause for `table`'s rows: all of them, or those of the traces in temp table `_changed`
        (`experiments`: always all)."""


def backoff_delays(budget_s: float, first_delay_s: float) -> list[float]:
    """The waits between attempts: doubling from `first_delay_s`, the last one cut so they add up to `budget_s`."""
    delays: list[float] = []
    while (spent := sum(delays)) < budget_s:
        delays.append(min(first_delay_s * 2 ** len(delays), budget_s - spent))
    return delays


def call_with_retries(call: Callable[[float], T], *, budget_s: float, first_delay_s: float,
                      retry_reason: Callable[[Exception], str | None],
                      on_retry: Callable[[str, int, int, float], None]) -> T:
    """`call(seconds_left)`, tried again after each of `backoff_delays` while it fails with an error that
    `retry_reason` gives a reason for and `budget_s` has not run out; else its error is raised.

    `on_retry(reason, retry, retries, wait_s)` is told before each wait, so a caller can log it."""
    delays = backoff_delays(budget_s, first_delay_s)
    deadline = time.monotonic() + budget_s
    for retry, delay in enumerate(delays, start=1):
        try:
            return call(deadline - time.monotonic())
        except Exception as exc:
            reason, left = retry_reason(exc), deadline - time.monotonic()
            if reason is None or left <= 0:
                raise
            wait = min(delay, left)
            on_retry(reason, retry, len(delays), wait)
            time.sleep(wait)
    return call(deadline - time.monotonic())
