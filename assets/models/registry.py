"""The agent as a registered MLflow model: a new version only when the agent's code, its model config or the
production prompt versions changed; aliases `challenger` (newest) and `champion` (serving)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from assets.vocabulary import CHALLENGER, FINGERPRINT_TAG, PRODUCTION, PROMPT_TAG_PREFIX
from resources.agent.responses_agent import INPUT_EXAMPLE

AGENT_DIR = Path(__file__).resolve().parents[2] / "resources" / "agent"
AGENT_FILE = AGENT_DIR / "responses_agent.py"
MODEL_CONFIG = {"prompt_alias": PRODUCTION}  # the served agent loads its prompts at this alias


def agent_fingerprint(prompt_versions: dict[str, int]) -> str:
    """SHA-256 of the agent's code files, its model config, the prompt versions it will load and MLflow's version."""
    digest = hashlib.sha256()
    for path in sorted(AGENT_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps({"config": MODEL_CONFIG, "prompts": prompt_versions, "mlflow": mlflow.__version__},
                             sort_keys=True).encode())
    return digest.hexdigest()


def latest_version(client: MlflowClient, name: str) -> ModelVersion | None:
    found = client.search_model_versions(f"name = '{name}'", max_results=1, order_by=["version_number DESC"])
    return found[0] if found else None


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


@dataclass
class RegisteredAgent:
    version: int
    created: bool
    fingerprint: str


def register_agent(client: MlflowClient, name: str, experiment_id: str, prompt_versions: dict[str, int],
                   tags: dict[str, str]) -> RegisteredAgent:
    """Log and register the agent unless the latest version has the same fingerprint; `challenger` follows it."""
    fingerprint = agent_fingerprint(prompt_versions)
    latest = latest_version(client, name)
    created = latest is None or (latest.tags or {}).get(FINGERPRINT_TAG) != fingerprint
    if created:
        requirements = [f"{package}=={importlib.metadata.version(package)}"
                        for package in ("mlflow", "pyyaml", "databricks-sdk")]  # what the agent's code imports
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}"):
            info = mlflow.pyfunc.log_model(
                name="agent", python_model=str(AGENT_FILE), code_paths=[str(AGENT_DIR.parent)],
                input_example=INPUT_EXAMPLE, model_config=MODEL_CONFIG, pip_requirements=requirements,
                registered_model_name=name,
            )
        version = int(info.registered_model_version)
        version_tags = {FINGERPRINT_TAG: fingerprint, **tags,
                        **{PROMPT_TAG_PREFIX + prompt: str(v) for prompt, v in prompt_versions.items()}}
        for key, value in version_tags.items():
            client.set_model_version_tag(name, str(version), key, value)
    else:
        version = int(latest.version)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None or int(challenger.version) != version:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    return RegisteredAgent(version, created, fingerprint)
