"""Jobs users launch from the Dagster UI, schedules and the CLI."""

from __future__ import annotations

import dagster as dg

main_job = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all(), description="Materialize every asset of the platform."
)
warehouse_refresh_job = dg.define_asset_job(
    "warehouse_refresh",
    selection=dg.AssetSelection.groups("traces", "insights"),
    description="Copy new and changed MLflow traces into the DuckDB warehouse, then refresh the insights "
    "(rollups, root causes, report).",
)

JOBS = [main_job, warehouse_refresh_job]
