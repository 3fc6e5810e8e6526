"""The one Dagster `Definitions` of llmops-platform (load with `-m orchestration.definitions`).

Built by a function Dagster calls when it loads the code location, so importing this module reads no
configuration: the environment (README "Configuration") is read when the definitions are built.
"""

from __future__ import annotations

import dagster as dg

from assets.alerts.assets import ALERT_ASSETS, ALERT_CHECKS
from assets.evals.assets import prompt_evals
from assets.insights.assets import dimension_facts, insights_report, insights_rollups, root_causes
from assets.labeling.assets import labeling_progress, labeling_sessions
from assets.models.assets import agent_deployment, agent_model
from assets.prompts.assets import prompt_production, prompt_registry
from assets.traces.assets import trace_warehouse
from orchestration.jobs import JOBS
from orchestration.schedules import automation_on, build_automation_sensor, build_schedules
from orchestration.sensors import build_sensors
from resources.deployment import DeploymentResource
from resources.mlflow import MlflowResource
from resources.settings import apply_defaults
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource

ASSETS = [trace_warehouse, dimension_facts, insights_rollups, root_causes, insights_report, prompt_registry, prompt_evals,
          prompt_production, agent_model, agent_deployment, labeling_sessions, labeling_progress, *ALERT_ASSETS]


@dg.definitions
def build_definitions() -> dg.Definitions:
    # The embedded defaults fill whatever the user did not set, so the EnvVars below resolve the same way under
    # `dagster dev`, `dagster asset materialize` and `llmops`.
    apply_defaults()
    running = automation_on()
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ALERT_CHECKS,
        jobs=JOBS,
        # Steps run in the run's own process: a process per step would import MLflow and Dagster again (~3 s a
        # step) to gain parallelism that two mostly sequential steps on a small machine cannot use.
        executor=dg.in_process_executor,
        schedules=build_schedules(running),
        sensors=[*build_sensors(running), build_automation_sensor(running)],
        resources={
            "mlflow": MlflowResource(
                tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), trace_source=dg.EnvVar("LLMOPS_TRACE_SOURCE"),
                eval_experiment=dg.EnvVar("LLMOPS_EVAL_EXPERIMENT"),
                agent_experiment=dg.EnvVar("LLMOPS_DEMO_EXPERIMENT"),
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
