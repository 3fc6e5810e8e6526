"""The user-edited data folders: prompt files and eval suites."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class UserFilesResource(dg.ConfigurableResource):
    """`prompts_dir` (`LLMOPS_PROMPTS_DIR`, default the project's `prompts/`), `evals_dir` (`LLMOPS_EVALS_DIR`,
    default `evals/`) and `labeling_rules` (`LLMOPS_LABELING_RULES`, default `labeling/rules.yaml`)."""

    prompts_dir: str
    evals_dir: str
    labeling_rules: str = str(Path(__file__).resolve().parent.parent / "labeling" / "rules.yaml")

    @property
    def labeling_rules_path(self) -> Path:
        return Path(self.labeling_rules)

    @property
    def prompts(self) -> Path:
        return Path(self.prompts_dir)

    @property
    def evals(self) -> Path:
        return Path(self.evals_dir)
