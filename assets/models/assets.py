"""Group `models`: the agent packaged and registered as an MLflow model, and its deployment (local serving or
Databricks Model Serving) with the `champion` alias on the version that serves."""

import time
from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from assets.failures import run_failures
from assets.prompts.assets import AGENT_PROMPTS
from assets.prompts.registry import git_commit, prompt_state
from assets.traces.quality import markdown_table
from assets.vocabulary import (
    CHALLENGER,
    CHAMPION,
    COMMIT_TAG,
    DEPLOYED_AT,
    ENDPOINT_TAG,
    EVAL_RUN_TAG,
    NOTE,
    PREVIOUS_CHAMPION,
    PRODUCTION,
    PROMPT_TAG_PREFIX,
    ROLLED_BACK_AT,
    SMOKE_TAG,
)
from resources.deployment import DeploymentResource
from resources.mlflow import MlflowResource
from resources.serving import DeployError
from resources.settings import PROJECT_DIR

if TYPE_CHECKING:  # MLflow, the model registry and the agent are imported by the steps that use them
    from mlflow import MlflowClient

COMMON = dict(group_name="models", owners=["team:llmops-platform"])


@dg.asset(
    **COMMON, deps=["prompt_production"], kinds={"mlflow", "python"},
    description="The demo agent as an MLflow ResponsesAgent model from code (signature, input example, pinned "
    "requirements; prompts loaded at `production` when the model loads), registered as a new version only when its "
    "code, config or production prompt versions changed; `challenger` points at the newest version.",
)
def agent_model(context: dg.AssetExecutionContext, mlflow: MlflowResource,
                deployment: DeploymentResource) -> dg.MaterializeResult:
    from assets.models.registry import register_agent

    client = mlflow.client()
    with run_failures(mlflow):
        productions = {name: prompt_state(client, name).alias(PRODUCTION) for name in AGENT_PROMPTS}
        if missing := [name for name, version in productions.items() if version is None]:
            raise dg.Failure(description=f"No production version of {missing}: release the prompts first "
                             "(the prompt_release job).")
        prompt_versions = {name: int(v.version) for name, v in productions.items()}
        # the evaluation that promoted the production prompts (promoted together, so one run for all)
        tags = {EVAL_RUN_TAG: next((v.tags[EVAL_RUN_TAG] for v in productions.values()
                                    if EVAL_RUN_TAG in (v.tags or {})), "")}
        if commit := git_commit(PROJECT_DIR):
            tags[COMMIT_TAG] = commit
        mlflow.make_current()
        registered = register_agent(client, deployment.model_name, mlflow.experiment_id(mlflow.agent_experiment),
                                    prompt_versions, tags)
    context.log.info(f"{deployment.model_name}: {'registered' if registered.created else 'unchanged at'} "
                     f"version {registered.version} (challenger)")
    unchanged = {} if registered.created else {NOTE: f"Nothing to register: {deployment.model_name} version "
                                               f"{registered.version} already holds this code, config and prompts"}
    return dg.MaterializeResult(metadata={
        "model": deployment.model_name,
        "version": dg.MetadataValue.int(registered.version),
        "new_version": registered.created,
        "prompt_versions": dg.MetadataValue.json(prompt_versions),
        "eval_run_id": tags[EVAL_RUN_TAG],
        "fingerprint": registered.fingerprint[:16],
    } | unchanged)


class DeployConfig(dg.Config):
    action: Literal["deploy", "rollback"] = Field(
        default="deploy", description="deploy: serve `challenger` and move `champion` to it after a passing smoke "
        "test; rollback: serve the version `champion` replaced and move the alias back.")


def _serve(context, client: "MlflowClient", deployment: DeploymentResource, target, version: int,
           replaces: int | None, rollback: bool = False) -> dg.MaterializeResult:
    """Deploy `version` in place of `replaces`; only after its smoke test passed, tag it and move `champion`."""
    from resources.agent.responses_agent import INPUT_EXAMPLE

    name = deployment.model_name
    context.log.info(f"deploying {name} version {version} to {deployment.environment}")
    try:
        live = target.deploy(version, name, INPUT_EXAMPLE)
    except DeployError as exc:
        raise dg.Failure(description=f"{name} version {version} was not deployed to {deployment.environment}: "
                         f"{exc}") from None
    tags = {DEPLOYED_AT: str(int(time.time() * 1000)), ENDPOINT_TAG: live.url, SMOKE_TAG: str(live.smoke_latency_ms)}
    if replaces is not None and replaces != version and not rollback:
        tags[PREVIOUS_CHAMPION] = str(replaces)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if rollback:
        client.set_model_version_tag(name, str(replaces), ROLLED_BACK_AT, tags[DEPLOYED_AT])
    client.set_registered_model_alias(name, CHAMPION, str(version))  # after the smoke test passed
    served = client.get_model_version(name, str(version)).tags
    prompts = {k.removeprefix(PROMPT_TAG_PREFIX): v for k, v in served.items() if k.startswith(PROMPT_TAG_PREFIX)}
    return dg.MaterializeResult(metadata={
        "environment": deployment.environment,
        "changed": True,
        "model_version": dg.MetadataValue.int(version),
        "replaced_version": dg.MetadataValue.int(replaces) if replaces is not None else "none",
        "prompt_versions": dg.MetadataValue.json(prompts),
        "eval_run_id": served.get(EVAL_RUN_TAG, ""),
        "endpoint": dg.MetadataValue.url(live.url),
        "smoke_latency_ms": dg.MetadataValue.float(live.smoke_latency_ms),
        "summary": dg.MetadataValue.md(markdown_table(
            ["environment", "version", "replaced", "endpoint", "smoke ms"],
            [(deployment.environment, version, replaces or "", live.url, live.smoke_latency_ms)])),
    })


def _nothing_to_do(context, deployment: DeploymentResource, note: str, **metadata) -> dg.MaterializeResult:
    """A deployment or rollback that had nothing to do: a success that changed nothing, with the note saying why."""
    context.log.info(note)
    return dg.MaterializeResult(metadata={"environment": deployment.environment, "changed": False, NOTE: note,
                                          **metadata})


@dg.asset(
    **COMMON, deps=["agent_model"], kinds={"mlflow", "databricks"},
    description="The agent serving in the environment of LLMOPS_DEPLOY_ENV (deploy/environments.yaml): local "
    "`mlflow models serve` or a Databricks Model Serving endpoint. A passing smoke test moves `champion` to the new "
    "version; on failure the previous version keeps serving. Run config action=rollback (the agent_rollback job) "
    "serves the previous champion again.",
)
def agent_deployment(context: dg.AssetExecutionContext, config: DeployConfig, mlflow: MlflowResource,
                     deployment: DeploymentResource) -> dg.MaterializeResult:
    from assets.models.registry import alias_version

    client, name = mlflow.client(), deployment.model_name
    with run_failures(mlflow):
        target = deployment.target(mlflow.tracking_uri, mlflow.agent_experiment)
        champion = alias_version(client, name, CHAMPION)
        if config.action == "rollback":
            previous = (champion.tags or {}).get(PREVIOUS_CHAMPION) if champion else None
            if not previous:
                return _nothing_to_do(context, deployment, f"Nothing to roll back: {name} has no champion that "
                                      "replaced an earlier version")
            return _serve(context, client, deployment, target, int(previous), int(champion.version), rollback=True)
        challenger = alias_version(client, name, CHALLENGER)
        if challenger is None:
            raise dg.Failure(description=f"{name} has no challenger version: materialize agent_model first.")
        live = target.current()
        if champion and champion.version == challenger.version and live and live.version == int(champion.version):
            return _nothing_to_do(context, deployment, f"Nothing to deploy: {name} version {champion.version} (the "
                                  f"challenger) already serves {deployment.environment}",
                                  model_version=dg.MetadataValue.int(live.version),
                                  endpoint=dg.MetadataValue.url(live.url))
        return _serve(context, client, deployment, target, int(challenger.version),
                      int(champion.version) if champion else None)
