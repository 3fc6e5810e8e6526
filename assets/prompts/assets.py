"""Group `prompts`: prompt files synced into MLflow's Prompt Registry, and the `production` alias that
evaluations justify (promotion) or a rollback restores."""

from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from assets.failures import run_failures
from assets.prompts.files import PromptFileError, folder_digest, load_prompt_files
from assets.prompts.registry import (
    ProductionChange,
    history_rows,
    promote_together,
    prompt_state,
    rollback_last_promotion,
    sync_prompts,
)
from assets.traces.quality import markdown_table
from assets.vocabulary import (
    BASELINE_METRIC,
    BASELINE_RATE_TAG,
    CANDIDATE,
    DAGSTER_RUN_TAG,
    EVAL_RUN_TAG,
    GATE_PASSED,
    GATE_TAG,
    NOTE,
    PASS_RATE_METRIC,
    PASS_RATE_TAG,
    PRODUCTION,
    PROMOTED_BY,
    PROMPT_TAG_PREFIX,
    PROMPTS_DIGEST,
    ROLE_TAG,
    SUITE_TAG,
)
from resources.agent.prompts import ANSWER, SYSTEM
from resources.mlflow import MlflowResource
from resources.user_files import UserFilesResource

if TYPE_CHECKING:  # MLflow is imported when a step makes its client, not by loading the definitions
    from mlflow import MlflowClient

AGENT_PROMPTS = (SYSTEM, ANSWER)  # what the evaluated demo agent loads; promotion moves these together
COMMON = dict(group_name="prompts", owners=["team:llmops-platform"])


@dg.asset(
    **COMMON, kinds={"mlflow", "yaml"},
    description="Prompt files (prompts/*.yaml) validated, then registered in MLflow's Prompt Registry when their "
    "content hash changed; the `candidate` alias points at the version holding each file's current content.",
)
def prompt_registry(context: dg.AssetExecutionContext, mlflow: MlflowResource,
                    user_files: UserFilesResource) -> dg.MaterializeResult:
    try:
        digest = folder_digest(user_files.prompts)  # before reading: a later edit then counts as unsynced
        prompts = load_prompt_files(user_files.prompts)  # all files valid, or nothing is registered
    except PromptFileError as exc:
        raise dg.Failure(description=str(exc), metadata={"problems": [str(p) for p in exc.problems]}) from None
    client = mlflow.client()
    with run_failures(mlflow):
        synced = sync_prompts(client, prompts, user_files.prompts)
        states = {s.name: prompt_state(client, s.name) for s in synced}
    for s in synced:
        context.log.info(f"{s.name}: {'registered version' if s.created else 'unchanged at version'} {s.version}")
    metadata = {
        "prompts": dg.MetadataValue.int(len(synced)),
        PROMPTS_DIGEST: digest,
        "new_versions": dg.MetadataValue.int(sum(s.created for s in synced)),
        "candidates": dg.MetadataValue.md(markdown_table(
            ["prompt", CANDIDATE, "new", PRODUCTION, "file"],
            [(s.name, s.version, "yes" if s.created else "", getattr(states[s.name].alias(PRODUCTION), "version", ""),
              s.source) for s in synced])),
    }
    for name, state in states.items():
        metadata[f"history_{name}"] = dg.MetadataValue.md(markdown_table(
            ["version", "aliases", "hash", "created (UTC)", "file", "commit"], history_rows(state)))
    if not any(s.created for s in synced):
        metadata[NOTE] = "Nothing to register: every prompt file's content is already its latest version"
        context.log.info(metadata[NOTE])
    return dg.MaterializeResult(metadata=metadata)


class ProductionConfig(dg.Config):
    action: Literal["promote", "rollback"] = Field(
        default="promote", description="promote: move `production` to the candidates a passing evaluation "
        "justified; rollback: move it back to the versions the last promotion replaced.")


def passing_evaluation(client: "MlflowClient", experiment_id: str, versions: dict[str, int]) -> list:
    """The candidate runs of the latest evaluation that passed the gate for exactly these prompt versions."""
    filters = [f"tags.`{ROLE_TAG}` = '{CANDIDATE}'", f"tags.`{GATE_TAG}` = '{GATE_PASSED}'"]
    filters += [f"tags.`{PROMPT_TAG_PREFIX}{name}` = '{version}'" for name, version in versions.items()]
    runs = client.search_runs([experiment_id], " AND ".join(filters), order_by=["attributes.start_time DESC"],
                              max_results=50)
    if not runs:
        return []
    latest = runs[0].data.tags.get(DAGSTER_RUN_TAG)
    return [r for r in runs if r.data.tags.get(DAGSTER_RUN_TAG) == latest]


def _promote_candidates(context, client: "MlflowClient", eval_experiment: str) -> ProductionChange:
    candidates = {name: int(client.get_prompt_version_by_alias(name, CANDIDATE).version) for name in AGENT_PROMPTS}
    experiment = client.get_experiment_by_name(eval_experiment)
    runs = passing_evaluation(client, experiment.experiment_id, candidates) if experiment else []
    if not runs:
        raise dg.Failure(description=f"No evaluation passed the gate for the candidate versions {candidates}: "
                         "materialize prompt_evals first (the prompt_release job does both).")
    evidence = {
        EVAL_RUN_TAG: ",".join(r.info.run_id for r in runs),
        PASS_RATE_TAG: ",".join(f"{r.data.tags[SUITE_TAG]}={r.data.metrics[PASS_RATE_METRIC]:.4f}" for r in runs),
        PROMOTED_BY: f"dagster run {context.run_id}",
    }
    if baselines := [f"{r.data.tags[SUITE_TAG]}={r.data.metrics[BASELINE_METRIC]:.4f}" for r in runs
                     if BASELINE_METRIC in r.data.metrics]:
        evidence[BASELINE_RATE_TAG] = ",".join(baselines)
    return promote_together(client, candidates, evidence)


@dg.asset(
    **COMMON, deps=["prompt_evals"], kinds={"mlflow"},
    description="The `production` alias of the agent's prompts: moved to the candidates when their evaluation "
    "passed the gate (evidence recorded as version tags), or back to the previous versions by prompt_rollback.",
)
def prompt_production(context: dg.AssetExecutionContext, config: ProductionConfig,
                      mlflow: MlflowResource) -> dg.MaterializeResult:
    client = mlflow.client()
    with run_failures(mlflow):
        if config.action == "rollback":
            change = rollback_last_promotion(client, list(AGENT_PROMPTS))
        else:
            change = _promote_candidates(context, client, mlflow.eval_experiment)
    for name, now, before, what in change.rows:
        context.log.info(f"{name}: {what} (production {before or 'none'} -> {now or 'none'})")
    if change.note:
        context.log.info(change.note)
    return dg.MaterializeResult(metadata={
        "action": config.action,
        "changed": dg.MetadataValue.int(sum(r[3] in ("promoted", "rolled back") for r in change.rows)),
        PRODUCTION: dg.MetadataValue.md(markdown_table(
            ["prompt", PRODUCTION, "before", "what happened"], change.rows)),
    } | ({NOTE: change.note} if change.note else {}))
