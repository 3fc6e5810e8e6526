"""The one Dagster `Definitions` of llmops-platform (load with `-m orchestration.definitions`)."""

from __future__ import annotations

import dagster as dg

from assets.insights.assets import insights_report, insights_rollups, root_causes
from assets.traces.assets import trace_warehouse
from orchestration.jobs import JOBS
from resources.mlflow import MlflowResource
from resources.settings import apply_defaults
from resources.warehouse import WarehouseResource

# Fill in the embedded defaults for whatever the user did not set, so the EnvVars below resolve
# the same way under `dagster dev`, `dagster asset materialize` and `llmops`.
apply_defaults()

defs = dg.Definitions(
    assets=[trace_warehouse, insights_rollups, root_causes, insights_report],
    jobs=JOBS,
    resources={
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), trace_source=dg.EnvVar("LLMOPS_TRACE_SOURCE")
        ),
        "warehouse": WarehouseResource(path=dg.EnvVar("LLMOPS_DUCKDB_PATH")),
    },
)
