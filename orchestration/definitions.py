"""The one Dagster `Definitions` of llmops-platform (load with `-m orchestration.definitions`)."""

from __future__ import annotations

import dagster as dg

from resources.settings import apply_defaults

# Fill in the embedded defaults for whatever the user did not set, so the EnvVars below resolve
# the same way under `dagster dev`, `dagster asset materialize` and `llmops`.
apply_defaults()

from assets.evals.assets import prompt_evals  # noqa: E402
from assets.insights.assets import insights_report, insights_rollups, root_causes  # noqa: E402
from assets.labeling.assets import labeling_progress, labeling_sessions  # noqa: E402
from assets.models.assets import agent_deployment, agent_model  # noqa: E402
from assets.prompts.assets import prompt_production, prompt_registry  # noqa: E402
from assets.traces.assets import trace_warehouse  # noqa: E402
from orchestration.jobs import JOBS  # noqa: E402
from orchestration.schedules import SCHEDULES  # noqa: E402
from orchestration.sensors import SENSORS  # noqa: E402
from resources.deployment import DeploymentResource  # noqa: E402
from resources.mlflow import MlflowResource  # noqa: E402
from resources.user_files import UserFilesResource  # noqa: E402
from resources.warehouse import WarehouseResource  # noqa: E402

defs = dg.Definitions(
    assets=[trace_warehouse, insights_rollups, root_causes, insights_report, prompt_registry, prompt_evals,
            prompt_production, agent_model, agent_deployment, labeling_sessions, labeling_progress],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), trace_source=dg.EnvVar("LLMOPS_TRACE_SOURCE"),
            eval_experiment=dg.EnvVar("LLMOPS_EVAL_EXPERIMENT"), agent_experiment=dg.EnvVar("LLMOPS_DEMO_EXPERIMENT"),
        ),
        "deployment": DeploymentResource(
            model_name=dg.EnvVar("LLMOPS_MODEL_NAME"), config_path=dg.EnvVar("LLMOPS_DEPLOY_CONFIG"),
            environment=dg.EnvVar("LLMOPS_DEPLOY_ENV"), state_dir=dg.EnvVar("LLMOPS_SERVING_DIR"),
        ),
        "warehouse": WarehouseResource(path=dg.EnvVar("LLMOPS_DUCKDB_PATH")),
        "user_files": UserFilesResource(prompts_dir=dg.EnvVar("LLMOPS_PROMPTS_DIR"),
                                        evals_dir=dg.EnvVar("LLMOPS_EVALS_DIR"),
                                        labeling_rules=dg.EnvVar("LLMOPS_LABELING_RULES")),
    },
)
