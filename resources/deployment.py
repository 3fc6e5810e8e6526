"""Where the agent is deployed: the environments file and the serving targets it names, as a Dagster resource."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from resources.serving import DatabricksServing, DeployError, LocalServing, load_environments


class DeploymentResource(dg.ConfigurableResource):
    """The registered agent model `model_name` and where it is deployed. `config_path` (`LLMOPS_DEPLOY_CONFIG`, default the project's `deploy/environments.yaml`) lists the
    environments; `environment` (`LLMOPS_DEPLOY_ENV`, default `dev`) is the one deployments go to; local servers
    keep their state under `state_dir` (`$LLMOPS_HOME/serving`)."""

    model_name: str = "llmops_support_agent"  # LLMOPS_MODEL_NAME; catalog.schema.name in Unity Catalog
    config_path: str
    environment: str = "dev"
    state_dir: str

    def target(self, tracking_uri: str, experiment: str) -> LocalServing | DatabricksServing:
        environments = load_environments(Path(self.config_path))
        if self.environment not in environments:
            raise DeployError(f"environment {self.environment!r} is not in {self.config_path} "
                              f"(it has {sorted(environments)}; set LLMOPS_DEPLOY_ENV)")
        settings = environments[self.environment]
        if settings.target == "databricks":
            return DatabricksServing(self.environment, settings)
        # The served agent reads its prompts from, and writes its traces to, the same tracking store.
        env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment}
        return LocalServing(Path(self.state_dir), self.environment, settings, env)
