"""What a command loads before its first step: loading the definitions imports neither MLflow, pandas nor Plotly,
every job runs its steps in the run's own process, and the extract step reads a SQLite store without MLflow.
(Times are measured in bench/startup.py, not here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import PROJECT_DIR, Store

HEAVY = ("mlflow", "pandas", "plotly")


def _loaded_after(script: str, *args: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has imported after running `script`."""
    probe = f"{script}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=PROJECT_DIR, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_loading_the_definitions_imports_no_mlflow_pandas_or_plotly():
    assert _loaded_after("from orchestration.definitions import build_definitions; build_definitions()") == []


def test_every_job_runs_its_steps_in_the_run_process():
    from orchestration.definitions import build_definitions

    definitions = build_definitions()
    # the implicit asset job is what `dagster asset materialize` and the UI's "Materialize" run
    jobs = [*(definitions.resolve_job_def(job.name) for job in definitions.jobs),
            definitions.resolve_implicit_global_asset_job_def()]
    assert len(jobs) > 1 and {job.name: job.executor_def.name for job in jobs} == dict.fromkeys(
        (job.name for job in jobs), "in_process")


def test_the_extract_reads_a_sqlite_store_without_importing_mlflow(seeded_store: Store, tmp_path):
    script = ("import sys\nfrom assets.traces.extract import extract_traces\n"
              "from resources.trace_sources import SqlTrackingStore\n"
              "assert extract_traces(SqlTrackingStore(sys.argv[1]), sys.argv[2]).mode == 'full'")
    assert "mlflow" not in _loaded_after(script, seeded_store.uri, str(tmp_path / "warehouse.duckdb"))
