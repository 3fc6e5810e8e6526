"""Prompt files (`prompts/*.yaml`): schema, validation with file and line, and the content hash.

Every file is read and validated before anything is registered, so one bad file changes nothing. A file:

    name: support_system                 # registry name: letters, digits, _ . -
    description: What the prompt is for   # becomes the version's commit message
    template: |                           # text, or a list of chat messages {role, content}
      Answer questions about {{product}}.
    variables: [product]                  # every {{variable}} the template uses, and no other
    model_parameters: {temperature: 0.0, max_tokens: 256}   # optional, MLflow's model config
    tags: {team: support}                 # optional, string values
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from assets.yaml_files import InvalidFilesError, Problem, files_in, line_of, read_folder
from resources.agent.prompts import PLACEHOLDER

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"  # also keeps names safe inside MLflow filter strings
PATTERNS = ("*.yaml", "*.yml")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class ModelParameters(BaseModel):
    """MLflow's PromptModelConfig fields (the registry stores them with the version)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    provider: str | None = None
    model_name: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, gt=0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop_sequences: list[str] | None = None


class PromptFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=NAME, max_length=256)
    description: str = ""
    template: str | list[ChatMessage]
    variables: list[str] = []
    model_parameters: ModelParameters | None = None
    tags: dict[str, str] = {}

    @field_validator("template")
    @classmethod
    def _template_not_blank(cls, template: str | list[ChatMessage]) -> str | list[ChatMessage]:
        if isinstance(template, str) and not template.strip():
            raise ValueError("must not be empty")
        if isinstance(template, list) and not template:
            raise ValueError("must hold at least one message")
        return template

    def texts(self) -> list[str]:
        return [self.template] if isinstance(self.template, str) else [m.content for m in self.template]

    def used_variables(self) -> set[str]:
        return {match for text in self.texts() for match in PLACEHOLDER.findall(text)}

    def registry_template(self) -> str | list[dict[str, str]]:
        return self.template if isinstance(self.template, str) else [m.model_dump() for m in self.template]

    def registry_model_config(self) -> dict | None:
        return self.model_parameters.model_dump(exclude_none=True) if self.model_parameters else None

    def content_hash(self) -> str:
        """SHA-256 of everything the file declares, normalised (comments and YAML layout do not count)."""
        canonical = json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class PromptFileError(InvalidFilesError):
    """One or more prompt files are malformed; nothing was registered."""

    def __init__(self, problems: list[Problem]):
        super().__init__("Invalid prompt files (nothing was registered):", problems)


@dataclass(frozen=True)
class LoadedPrompt:
    prompt: PromptFile
    source: str  # the file, relative to the prompts folder's parent

    @property
    def name(self) -> str:
        return self.prompt.name


def _problems_in_template(prompt: PromptFile, node: yaml.Node, file: str) -> list[Problem]:
    line = line_of(node, ("template",))
    problems = []
    for text in prompt.texts():
        leftover = PLACEHOLDER.sub("", text)
        if "{{" in leftover or "}}" in leftover:
            problems.append(Problem(file, line, "template: malformed placeholder (use {{name}} with a plain identifier)"))
            break
    used, declared = prompt.used_variables(), set(prompt.variables)
    if undeclared := sorted(used - declared):
        problems.append(Problem(file, line_of(node, ("variables",)),
                                f"variables: template uses {undeclared} but they are not declared"))
    if unused := sorted(declared - used):
        problems.append(Problem(file, line_of(node, ("variables",)),
                                f"variables: {unused} declared but not used in the template"))
    if len(prompt.variables) != len(declared):
        problems.append(Problem(file, line_of(node, ("variables",)), "variables: a variable is declared twice"))
    return problems


def load_prompt_files(folder: Path) -> list[LoadedPrompt]:
    """Every `*.yaml`/`*.yml` in `folder`, validated; raises PromptFileError listing every problem found."""
    parsed, problems = read_folder(folder, PATTERNS, PromptFile, "no *.yaml prompt files (set LLMOPS_PROMPTS_DIR)")
    loaded, first_file = [], {}
    for shown, prompt, node in parsed:
        problems += _problems_in_template(prompt, node, shown)
        if prompt.name in first_file:
            problems.append(Problem(shown, line_of(node, ("name",)),
                                    f"name: {prompt.name!r} is already defined in {first_file[prompt.name]}"))
            continue
        first_file[prompt.name] = shown
        loaded.append(LoadedPrompt(prompt, shown))
    if problems:
        raise PromptFileError(problems)
    return loaded


def folder_digest(folder: Path) -> str:
    """A hash of the prompt files' names and bytes: what the file sensor watches."""
    digest = hashlib.sha256()
    for path in files_in(folder, PATTERNS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
