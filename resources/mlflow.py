"""The MLflow tracking store as a Dagster resource."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from resources.trace_sources import TraceSource, source_for


class MlflowResource(dg.ConfigurableResource):
    """Where traces, prompts and models live (`MLFLOW_TRACKING_URI`; default `$LLMOPS_HOME/mlflow.db`).

    `trace_source` picks how traces are read: `sql` reads MLflow's SQLite database directly (fast),
    `api` goes through MLflow's client API; `auto` picks `sql` for sqlite URIs.
    """

    tracking_uri: str
    trace_source: str = "auto"

    def traces(self, progress: Callable[[str], None] | None = None) -> TraceSource:
        return source_for(self.tracking_uri, self.trace_source, progress)
