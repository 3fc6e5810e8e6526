"""Jobs users launch from the Dagster UI, schedules, sensors and the CLI."""

from __future__ import annotations

import dagster as dg

main_job = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all() - dg.AssetSelection.assets("agent_deployment"),
    description="Materialize every asset of the platform except the deployment (it starts a long-lived server or "
    "changes a serving endpoint: run agent_release for that).",
)
# A killed extract leaves the last committed state and its retry converges (run monitoring fails the killed run).
RETRIED = {"dagster/max_retries": "2"}
# The alert rules are judged at the end of every refresh; the endpoint's health has a job of its own.
REFRESHED = dg.AssetSelection.groups("traces", "insights") | dg.AssetSelection.assets("alert_incidents")
warehouse_refresh_job = dg.define_asset_job(
    "warehouse_refresh",
    selection=REFRESHED,
    tags=RETRIED,
    description="Copy new and changed MLflow traces into the DuckDB warehouse, then refresh the insights "
    "(dimension facts, rollups, root causes, report) and judge the alert rules.",
)
full_refresh_job = dg.define_asset_job(
    "full_refresh",
    selection=REFRESHED,
    tags=RETRIED,
    config={"ops": {"trace_warehouse": {"config": {"full_refresh": True}}}},
    description="Re-read every trace from MLflow into the warehouse (not only new and changed ones) and rebuild the "
    "insights: for backfills after changing the trace source or repairing the warehouse.",
)
prompt_release_job = dg.define_asset_job(
    "prompt_release",
    selection=dg.AssetSelection.assets("prompt_registry", "prompt_evals", "prompt_production"),
    description="Sync the prompt files into MLflow's Prompt Registry (new versions become `candidate`), evaluate "
    "the candidates, and promote them to `production` only if the eval gate passes.",
)
prompt_rollback_job = dg.define_asset_job(
    "prompt_rollback",
    selection=dg.AssetSelection.assets("prompt_production"),
    config={"ops": {"prompt_production": {"config": {"action": "rollback"}}}},
    description="Move `production` back to the prompt versions the last promotion replaced.",
)
evals_job = dg.define_asset_job(
    "evals",
    selection=dg.AssetSelection.assets("prompt_evals"),
    description="Evaluate the prompts at `candidate` and at `production` with the eval suites (the eval_gate check "
    "runs too); nothing is promoted. Scheduled daily, so a change outside the prompts (tools, LLM) shows.",
)
agent_release_job = dg.define_asset_job(
    "agent_release",
    selection=dg.AssetSelection.assets("agent_model", "agent_deployment"),
    description="Register the agent if its code, config or production prompts changed (`challenger`), deploy it to "
    "LLMOPS_DEPLOY_ENV, smoke-test it and move `champion` to it.",
)
agent_rollback_job = dg.define_asset_job(
    "agent_rollback",
    selection=dg.AssetSelection.assets("agent_deployment"),
    config={"ops": {"agent_deployment": {"config": {"action": "rollback"}}}},
    description="Serve the version the current `champion` replaced again and move `champion` back to it.",
)

endpoint_check_job = dg.define_asset_job(
    "check_endpoint",
    selection=dg.AssetSelection.assets("endpoint_health"),
    description="Ping the deployed agent, record the check and judge the endpoint alert rules (scheduled every "
    "5 minutes).",
)
labeling_job = dg.define_asset_job(
    "labeling",
    selection=dg.AssetSelection.assets("labeling_sessions", "labeling_progress"),
    description="Add traces with new negative feedback to their rule's labeling session (launched by "
    "negative_feedback_sensor with the batch in its run config), then refresh labeling_progress.",
)

JOBS = [main_job, labeling_job, warehouse_refresh_job, full_refresh_job, prompt_release_job, prompt_rollback_job,
        evals_job, agent_release_job, agent_rollback_job, endpoint_check_job]
