"""The MLflow tracking store (traces, prompt registry, evaluation runs) as a Dagster resource."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from resources.trace_sources import TraceSource, source_for, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MlflowResource(dg.ConfigurableResource):
    """Where traces, prompts and models live (`MLFLOW_TRACKING_URI`; default `$LLMOPS_HOME/mlflow.db`).

    `trace_source` picks how traces are read: `sql` reads MLflow's SQLite database directly (fast),
    `api` goes through MLflow's client API; `auto` picks `sql` for sqlite URIs. `eval_experiment`
    (`LLMOPS_EVAL_EXPERIMENT`) is the experiment prompt evaluations log into; `agent_experiment`
    (`LLMOPS_DEMO_EXPERIMENT`) holds the agent's traces and its logged models.
    """

    tracking_uri: str
    trace_source: str = "auto"
    eval_experiment: str = "llmops-evals"  # where prompt evaluations log their runs
    agent_experiment: str = "llmops-demo"  # the agent's traffic, logged models and served traces

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.initialize_store()

    def initialize_store(self) -> None:
        """Create a new SQLite store once, under a file lock: MLflow's migrations race when two processes (two
        steps of one run) open a brand-new store at the same time ("table experiments already exists")."""
        path = sqlite_path(self.tracking_uri)
        if path is None:
            return  # a server or database store is created by whoever runs it
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.init-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
            if not _has_schema(path):
                self.client().search_experiments(max_results=1)  # runs MLflow's migrations

    def traces(self, progress: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None) -> TraceSource:
        return source_for(self.tracking_uri, self.trace_source, progress, warn)

    def client(self) -> MlflowClient:
        """A client for this store and its prompt registry (MLflow derives the registry from the tracking URI:
        the same store locally, Unity Catalog for `databricks`)."""
        from mlflow import MlflowClient  # imported by the steps that talk to MLflow: ~1.5 s the others never pay

        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it if needed. For a local SQLite store its artifacts go beside the
        database file (MLflow would put them in ./mlruns of whatever folder the process runs in)."""
        client = self.client()
        if found := client.get_experiment_by_name(name):
            return found.experiment_id
        location = None
        if path := sqlite_path(self.tracking_uri):
            location = (path.parent / "mlartifacts" / name).as_uri()
        return client.create_experiment(name, artifact_location=location)

    def make_current(self) -> None:
        """Point MLflow's fluent API (`mlflow.genai.evaluate`, `start_run`) at this store."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)


def _has_schema(path: Path) -> bool:
    """Whether MLflow has created its tables in the SQLite file (checked under the lock, so not half-way)."""
    if not path.exists():
        return False
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        try:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
        except sqlite3.OperationalError:  # no such table: new, or being created by a process without the lock
            return False
