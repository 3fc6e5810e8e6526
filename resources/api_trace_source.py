"""Traces read through MLflow's client API: remote tracking servers, Databricks, or any store URI.

It rebuilds the rows of MLflow's own SQL tables from the API's entities (as Arrow tables registered in
DuckDB), so the extractor's SQL is the same as for the direct SQL reader and both give the same
warehouse. Trace infos (with tags, metadata and assessments) are paged with the upper time bound pinned at
the start of the run, so new traces cannot shift the pages; spans are fetched only for changed traces.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import duckdb
import pyarrow as pa
import requests
from mlflow import MlflowClient
from mlflow.entities import Span, TraceInfo, ViewType
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.tracing.client import TracingClient
from urllib3.exceptions import ResponseError

from resources.settings import DEFAULT_MLFLOW_RETRY_S, LLMOPS_MLFLOW_RETRY_S, env_float, mask_uri, scrub
from resources.source_contract import RAW_COLUMNS, TRACE_ID_COLUMN, SourceError, call_with_retries

T = TypeVar("T")

# How long one MLflow call may keep failing (server unreachable, timing out, answering 429/5xx) before the
# extract fails; retries wait 2, 4, 8 and 6 s (doubling, the last wait cut to fit the budget). 20 s leaves the
# `llmops extract` command, Dagster startup included, well within a minute to report an unreachable server.
FIRST_RETRY_DELAY_S = 2.0
MIN_ATTEMPT_TIMEOUT_S = 5  # the last attempt, at the end of the budget, still gets a fair chance to answer

_TYPES = {
    "experiment_id": pa.string(), "timestamp_ms": pa.int64(), "execution_time_ms": pa.int64(),
    "input_tokens": pa.int64(), "output_tokens": pa.int64(), "total_tokens": pa.int64(),
    "input_cost": pa.float64(), "output_cost": pa.float64(), "total_cost": pa.float64(), "db_payload_generation": pa.int64(),
    "cache_read_input_tokens": pa.int64(), "cache_creation_input_tokens": pa.int64(),
    "cache_creation_input_tokens_above_1hr": pa.int64(),
    "creation_time": pa.int64(), "last_update_time": pa.int64(), "created_time": pa.int64(),
    "start_time_unix_nano": pa.int64(), "end_time_unix_nano": pa.int64(),
    "created_timestamp": pa.int64(), "last_updated_timestamp": pa.int64(), "valid": pa.bool_(),
}


def _arrow(table: str, rows: list[dict]) -> pa.Table:
    schema = pa.schema([(c, _TYPES.get(c, pa.string())) for c in RAW_COLUMNS[table]])
    return pa.Table.from_pylist(rows, schema=schema)


def _json_dict(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def trace_info_rows(info: TraceInfo) -> dict[str, list[dict]]:
    """The rows MLflow's SQL store keeps for one trace info (3.17 layout)."""
    meta, tid = info.trace_metadata, info.trace_id
    usage, cost = _json_dict(meta.get("mlflow.trace.tokenUsage")), _json_dict(meta.get("mlflow.trace.cost"))
    rows: dict[str, list[dict]] = {
        "trace_info": [{
            "request_id": tid, "experiment_id": info.experiment_id, "timestamp_ms": info.request_time,
            "execution_time_ms": info.execution_duration, "status": info.state.value,
            "client_request_id": info.client_request_id, "request_preview": info.request_preview,
            "response_preview": info.response_preview, "trace_name": info.tags.get("mlflow.traceName"),
            "session_id": meta.get("mlflow.trace.session"),
            **{k: usage.get(k) for k in ("input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens",
                                         "cache_creation_input_tokens", "cache_creation_input_tokens_above_1hr")},
            **{k: cost.get(k) for k in ("input_cost", "output_cost", "total_cost")},
            # Not in MLflow's API: spans added to a trace later are seen only with other changes (README).
            "db_payload_generation": None,
        }],
        "trace_tags": [{"request_id": tid, "key": k, "value": v} for k, v in info.tags.items()],
        "trace_request_metadata": [{"request_id": tid, "key": k, "value": v} for k, v in meta.items()],
        "assessments": [],
    }
    for a in info.assessments:
        if a.feedback is not None:
            kind, value = "feedback", a.feedback.value
            error = json.dumps(a.feedback.error.to_dictionary()) if a.feedback.error else None
        elif a.expectation is not None:
            kind, value, error = "expectation", a.expectation.value, None
        else:
            kind, value, error = "issue", a.issue.to_dictionary(), None
        rows["assessments"].append({
            "assessment_id": a.assessment_id, "trace_id": tid, "experiment_id": info.experiment_id,
            "name": a.name, "assessment_type": kind, "value": json.dumps(value), "error": error,
            "created_timestamp": a.create_time_ms, "last_updated_timestamp": a.last_update_time_ms,
            "source_type": a.source.source_type, "source_id": a.source.source_id, "run_id": a.run_id,
            "span_id": a.span_id, "rationale": a.rationale, "overrides": a.overrides,
            # MLflow's REST conversion drops `valid` for expectations, which are never overridden: valid.
            "valid": True if a.valid is None else a.valid,
            "assessment_metadata": json.dumps(a.metadata) if a.metadata else None,
        })
    return rows


def span_row(trace_id: str, experiment_id: str, span: Span) -> dict:
    cost = span.get_attribute("mlflow.llm.cost")
    return {
        "trace_id": trace_id, "experiment_id": experiment_id, "span_id": span.span_id,
        "parent_span_id": span.parent_id, "name": span.name, "type": span.span_type,
        "status": span.status.status_code.value, "start_time_unix_nano": span.start_time_ns,
        "end_time_unix_nano": span.end_time_ns, "content": json.dumps(span.to_dict()),
        **{k: cost.get(k) if isinstance(cost, dict) else None for k in ("input_cost", "output_cost", "total_cost")},
        "model_name": span.get_attribute("mlflow.llm.model"),
        "model_provider": span.get_attribute("mlflow.llm.provider"),
    }


class ApiTrackingStore:
    """Any tracking URI MLflow's client accepts (http(s)://, databricks, postgresql://, sqlite:///...)."""

    page_size = 500
    batch_size = 100
    attach_retry_s = 0  # each MLflow call is retried on its own (`_call`); retrying attach would repeat them

    def __init__(self, uri: str, progress: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.uri = uri
        self.label = f"api:{mask_uri(uri)}"
        self.progress = progress or (lambda message: None)
        self.warn = warn or self.progress
        self.retry_s = env_float(LLMOPS_MLFLOW_RETRY_S, DEFAULT_MLFLOW_RETRY_S)
        self._tables: dict[str, pa.Table] = {}  # kept alive: DuckDB reads them in place

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        client = MlflowClient(tracking_uri=self.uri)
        experiments = self._call(lambda: client.search_experiments(view_type=ViewType.ALL, max_results=50_000))
        self._register(con, "experiments", _arrow("experiments", [
            {"experiment_id": e.experiment_id, "name": e.name, "lifecycle_stage": e.lifecycle_stage,
             "creation_time": e.creation_time, "last_update_time": e.last_update_time} for e in experiments]))
        experiment_ids = [e.experiment_id for e in experiments if e.lifecycle_stage == "active"]
        bound_ms = int(time.time() * 1000)
        rows: dict[str, list[dict]] = {t: [] for t in ("trace_info", "trace_tags", "trace_request_metadata", "assessments")}
        seen: set[str] = set()
        for start in range(0, len(experiment_ids), 50):
            token = None
            while True:
                page = self._call(lambda: client.search_traces(
                    locations=experiment_ids[start : start + 50], filter_string=f"trace.timestamp_ms <= {bound_ms}",
                    max_results=self.page_size, page_token=token, include_spans=False,
                ))
                for trace in page:
                    if trace.info.trace_id not in seen:  # an offset page may repeat a row after concurrent writes
                        seen.add(trace.info.trace_id)
                        for table, table_rows in trace_info_rows(trace.info).items():
                            rows[table].extend(table_rows)
                self.progress(f"listed {len(seen)} traces")
                token = page.token
                if not token:
                    break
        for table, table_rows in rows.items():
            self._register(con, table, _arrow(table, table_rows))
        # MLflow's client API has no call listing a trace's links to runs and prompts: none are copied (README).
        self._register(con, "entity_associations", _arrow("entity_associations", []))

    def relation(self, con: duckdb.DuckDBPyConnection, table: str, only_changed: bool) -> str:
        if table == "spans":
            self._fetch_spans(con, only_changed)
        where = f" WHERE {TRACE_ID_COLUMN[table]} IN (SELECT trace_id FROM _changed)" if only_changed else ""
        return f"(SELECT * FROM _api_{table}{where})"

    def _fetch_spans(self, con: duckdb.DuckDBPyConnection, only_changed: bool) -> None:
        source = "_changed" if only_changed else "_api_trace_info"
        column = "trace_id" if only_changed else "request_id"
        trace_ids = [r[0] for r in con.execute(f"SELECT {column} FROM {source}").fetchall()]
        experiment_of = dict(con.execute("SELECT request_id, experiment_id FROM _api_trace_info").fetchall())
        tracing, rows = TracingClient(tracking_uri=self.uri), []
        for start in range(0, len(trace_ids), self.batch_size):
            for trace in self._call(lambda: tracing.batch_get_traces(trace_ids[start : start + self.batch_size])):
                tid = trace.info.trace_id
                rows.extend(span_row(tid, experiment_of.get(tid, trace.info.experiment_id), s) for s in trace.data.spans)
            self.progress(f"fetched spans of {min(start + self.batch_size, len(trace_ids))}/{len(trace_ids)} traces")
        self._register(con, "spans", _arrow("spans", rows))

    def _call(self, call: Callable[[], T]) -> T:
        """One MLflow call, retried while the server is unreachable or overloaded, each retry logged; a SourceError
        naming the masked URI when the budget runs out or MLflow refuses the call."""
        started = time.monotonic()

        def attempt(seconds_left: float) -> T:
            with single_http_attempt(timeout_s=max(MIN_ATTEMPT_TIMEOUT_S, math.ceil(seconds_left))):
                return call()

        def log_retry(reason: str, retry: int, retries: int, wait_s: float) -> None:
            self.warn(f"MLflow at {mask_uri(self.uri)} unreachable ({reason}); retry {retry}/{retries} in "
                      f"{round(wait_s, 1):g} s")

        try:
            return call_with_retries(attempt, budget_s=self.retry_s, first_delay_s=FIRST_RETRY_DELAY_S,
                                     retry_reason=unreachable_reason, on_retry=log_retry)
        except MlflowException as exc:
            # `from None`: MLflow's error and its chain show the URI with its password.
            if reason := unreachable_reason(exc):
                raise SourceError(
                    f"MLflow at {mask_uri(self.uri)} unreachable ({reason}); gave up after "
                    f"{time.monotonic() - started:.0f} s of retries ({LLMOPS_MLFLOW_RETRY_S}={self.retry_s:g}). "
                    "Check MLFLOW_TRACKING_URI and that the tracking server is running."
                ) from None
            raise SourceError(f"MLflow at {mask_uri(self.uri)} refused the call: {scrub(str(exc), self.uri)}") from None

    def _register(self, con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
        self._tables[table] = data
        con.register(f"_api_{table}", data)


@contextmanager
def single_http_attempt(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP client makes one try, waiting at most `timeout_s` (or MLFLOW_HTTP_REQUEST_TIMEOUT if lower):
    `ApiTrackingStore._call` does the retrying, and logs it. MLflow reads these variables at each request and has
    no per-client setting, so they are set for the call's duration (other threads' MLflow calls see them too)."""
    names = (MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, MLFLOW_HTTP_REQUEST_TIMEOUT.name)
    saved = {name: os.environ.get(name) for name in names}
    os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(min(timeout_s, MLFLOW_HTTP_REQUEST_TIMEOUT.get()))
    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def unreachable_reason(exc: BaseException) -> str | None:
    """Why MLflow could not be reached, when trying again may help (refused or broken connections, timeouts,
    HTTP 408/429/5xx answers); None for an answer that retrying cannot change. MLflow reports all of these as
    an MlflowException whose chain holds the `requests` error."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if not any(isinstance(e, requests.RequestException) for e in chain):
        return None
    for error, reason in ((ConnectionRefusedError, "connection refused"), (socket.gaierror, "host not found"),
                          (requests.Timeout, "no answer in time")):
        if any(isinstance(e, error) for e in chain):
            return reason
    busy = next((e for e in chain if isinstance(e, ResponseError)), None)  # "too many 503 error responses"
    return str(busy) if busy else "connection failed"
