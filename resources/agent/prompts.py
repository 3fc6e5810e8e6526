"""The demo agent's prompts: from the project's prompt files (seeding demo traffic) or from MLflow's Prompt
Registry by alias (evaluation, serving). Templates use MLflow's `{{variable}}` placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SYSTEM, ANSWER = "support_system", "support_answer"  # the registry names the agent loads
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "prompts"
PRODUCT = "Acme Analytics"


def render(template: str, **values: str) -> str:
    """Fill every {{variable}}; a variable without a value is an error naming it."""
    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"prompt variable {match.group(1)!r} has no value")
        return values[match.group(1)]

    return PLACEHOLDER.sub(fill, template)


class PromptNotFound(LookupError):
    """The registry has no version of a prompt the agent needs at the requested alias."""


@dataclass(frozen=True)
class AgentPrompts:
    system: str
    answer: str
    model_parameters: dict[str, Any] = field(default_factory=dict)  # the system prompt's (temperature, max_tokens)
    versions: dict[str, int] = field(default_factory=dict)  # registry versions; empty when read from files

    @classmethod
    def from_files(cls, folder: Path = BUNDLED_DIR) -> AgentPrompts:
        """The prompt files' templates as they are on disk (validation happens when they are synced)."""
        docs = {}
        for name in (SYSTEM, ANSWER):
            path = Path(folder) / f"{name}.yaml"
            if not path.exists():
                raise FileNotFoundError(f"the demo agent needs the prompt file {path}")
            docs[name] = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(docs[SYSTEM]["template"], docs[ANSWER]["template"], docs[SYSTEM].get("model_parameters") or {})

    @classmethod
    def from_registry(cls, client, alias: str, overrides: dict[str, str] | None = None) -> AgentPrompts:
        """Each prompt at `alias` (or at the alias `overrides` names for it). The alias is resolved to a version
        number first, so MLflow's 60-second alias cache never serves a stale template."""
        from mlflow.exceptions import MlflowException

        versions = {}
        for name in (SYSTEM, ANSWER):
            wanted = (overrides or {}).get(name, alias)
            try:
                versions[name] = client.get_prompt_version_by_alias(name, wanted)
            except MlflowException as exc:
                raise PromptNotFound(f"prompt {name!r} has no version with alias {wanted!r}: sync the prompts first") from exc
        if chat := [name for name, v in versions.items() if not isinstance(v.template, str)]:
            raise PromptNotFound(f"the demo agent needs text templates, but {chat} hold chat messages")
        system, answer = versions[SYSTEM], versions[ANSWER]
        return cls(system.template, answer.template, dict(system.model_config or {}),
                   {name: int(v.version) for name, v in versions.items()})
