"""The user-edited data folders: prompt files and eval suites."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class UserFilesResource(dg.ConfigurableResource):
    """`prompts_dir` (`LLMOPS_PROMPTS_DIR`, default the project's `prompts/`) and `evals_dir`
    (`LLMOPS_EVALS_DIR`, default `evals/`)."""

    prompts_dir: str
    evals_dir: str

    @property
    def prompts(self) -> Path:
        return Path(self.prompts_dir)

    @property
    def evals(self) -> Path:
        return Path(self.evals_dir)
