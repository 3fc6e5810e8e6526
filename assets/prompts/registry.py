"""Prompt files in MLflow's Prompt Registry: sync by content hash, aliases, promotion with evidence, rollback.

Aliases: `candidate` is the version holding the prompt file's current content (moved by each sync that
registers a version); `production` is what serves, moved only by a promotion that an evaluation justified,
or by a rollback. MLflow registers a new version even for identical content, so sync compares the file's
content hash with the latest version's `llmops.content_hash` tag and registers only on change.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from assets.prompts.files import LoadedPrompt
from assets.vocabulary import (
    CANDIDATE,
    COMMIT_TAG,
    HASH_TAG,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    PROMOTED_AT,
    ROLLED_BACK_AT,
    SOURCE_TAG,
)

if TYPE_CHECKING:  # MLflow is imported by the steps that call it, not by loading the definitions
    from mlflow import MlflowClient
    from mlflow.entities.model_registry.prompt_version import PromptVersion

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry is not in a state that allows the requested change; the message says why."""


@dataclass
class SyncedPrompt:
    name: str
    version: int
    created: bool  # a new version was registered by this sync
    content_hash: str
    source: str


@dataclass
class ProductionChange:
    """What a promotion or a rollback did: rows of (prompt, production now, before, what happened) and, when it
    moved nothing, the note saying why (a success: there was nothing to do)."""

    rows: list[tuple]
    note: str = ""


def _unchanged(current: dict[str, int | None], what: str) -> list[tuple]:
    return [(name, version or "", version or "", what) for name, version in current.items()]


@dataclass
class PromptState:
    """A prompt's versions (newest first) and the versions its `candidate` and `production` aliases point at."""

    name: str
    versions: list[PromptVersion] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)

    def alias(self, alias: str) -> PromptVersion | None:
        return self.version(self.aliases[alias]) if alias in self.aliases else None

    def version(self, number: int) -> PromptVersion | None:
        return next((v for v in self.versions if int(v.version) == int(number)), None)

    def aliases_of(self, number: int) -> list[str]:
        return sorted(alias for alias, version in self.aliases.items() if version == int(number))


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_prompt_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if f"alias {alias} not found" in str(exc).lower():
            return None
        raise


def prompt_state(client: MlflowClient, name: str) -> PromptState:
    """The prompt's versions and aliases. (MLflow's version search leaves `aliases` empty, so the two aliases
    the platform manages are looked up one by one.)"""
    if client.get_prompt(name) is None:
        return PromptState(name)
    versions, token = [], None
    while True:
        page = client.search_prompt_versions(name, max_results=100, page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            break
    aliases = {alias: v for alias in (CANDIDATE, PRODUCTION) if (v := _alias_version(client, name, alias)) is not None}
    return PromptState(name, sorted(versions, key=lambda v: -int(v.version)), aliases)


def git_commit(folder: Path) -> str | None:
    """The commit of the prompts folder's checkout, with `-dirty` when its files differ from it; None outside git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--", ".") else "")


def sync_prompt(client: MlflowClient, loaded: LoadedPrompt, commit: str | None) -> SyncedPrompt:
    """Register the file's content unless the latest version already holds it; point `candidate` at it.

    A version and its alias move together: if the alias cannot be set, the new version is deleted again
    (and if even that fails, the next sync finds the version by its hash and sets the alias then)."""
    prompt, content_hash = loaded.prompt, loaded.prompt.content_hash()
    state = prompt_state(client, prompt.name)
    latest = state.versions[0] if state.versions else None
    created = latest is None or (latest.tags or {}).get(HASH_TAG) != content_hash
    if created:
        tags = {**prompt.tags, HASH_TAG: content_hash, SOURCE_TAG: loaded.source}
        if commit:
            tags[COMMIT_TAG] = commit
        latest = client.register_prompt(
            prompt.name, prompt.registry_template(), commit_message=prompt.description or None, tags=tags,
            model_config=prompt.registry_model_config(),
        )
    version = int(latest.version)
    current = state.alias(CANDIDATE)
    if created or current is None or int(current.version) != version:
        try:
            client.set_prompt_alias(prompt.name, CANDIDATE, version)
        except Exception:
            if created:
                try:
                    client.delete_prompt_version(prompt.name, str(version))
                except Exception:  # the next sync repairs it: the version is found by its hash
                    log.warning("could not delete version %s of %s after the alias failed", version, prompt.name)
            raise
    return SyncedPrompt(prompt.name, version, created, content_hash, loaded.source)


def sync_prompts(client: MlflowClient, prompts: list[LoadedPrompt], folder: Path) -> list[SyncedPrompt]:
    commit = git_commit(folder)
    return [sync_prompt(client, loaded, commit) for loaded in prompts]


def _move_production(client: MlflowClient, name: str, version: int | None) -> None:
    if version is None:
        client.delete_prompt_alias(name, PRODUCTION)
    else:
        client.set_prompt_alias(name, PRODUCTION, version)


def _all_or_nothing(client: MlflowClient, moves: list[tuple[str, int | None, int]], tag: Callable) -> None:
    """Move `production` of each (name, from, to), tagging the version first; if a move fails, undo the ones made
    so far, so the prompts evaluated together are never half promoted."""
    done: list[tuple[str, int | None]] = []
    try:
        for name, before, after in moves:
            tag(name, before, after)
            _move_production(client, name, after)  # the commit point: evidence first, then the alias
            done.append((name, before))
    except Exception:
        for name, before in reversed(done):
            try:
                _move_production(client, name, before)
            except Exception:
                log.warning("could not move production of %s back to %s", name, before)
        raise


def promote_together(client: MlflowClient, versions: dict[str, int], evidence: dict[str, str]) -> ProductionChange:
    """Move `production` to `versions` (evaluated together), recording the evidence and the version each replaces
    on the promoted versions' tags. Nothing moves if one of them was rolled back before."""
    states = {name: prompt_state(client, name) for name in versions}
    for name, version in versions.items():
        if states[name].version(version) is None:
            raise RegistryError(f"prompt {name!r} has no version {version}")
    current = {name: int(v.version) if (v := states[name].alias(PRODUCTION)) else None for name in versions}
    rolled_back = [f"{name} v{version}" for name, version in versions.items()
                   if current[name] != version and ROLLED_BACK_AT in (states[name].version(version).tags or {})]
    if rolled_back:
        reason = f"Not promoted: {', '.join(rolled_back)} was rolled back; edit the prompt file to release a new version"
        return ProductionChange(_unchanged(current, reason), note=reason)
    moves = [(name, current[name], version) for name, version in versions.items() if current[name] != version]
    if not moves:
        return ProductionChange(_unchanged(current, "already production"), note="Nothing to promote: "
                                f"{', '.join(f'{n} v{v}' for n, v in versions.items())} already production")
    stamp = str(int(time.time() * 1000))

    def tag(name: str, before: int | None, after: int) -> None:
        tags = {**evidence, PROMOTED_AT: stamp} | ({PREVIOUS_PRODUCTION: str(before)} if before else {})
        for key, value in tags.items():
            client.set_prompt_version_tag(name, after, key, value)

    _all_or_nothing(client, moves, tag)
    moved = {name for name, _, _ in moves}
    return ProductionChange([(name, version, current[name] or "", "promoted" if name in moved else "already production")
                             for name, version in versions.items()])


def rollback_last_promotion(client: MlflowClient, names: list[str]) -> ProductionChange:
    """Move `production` of the prompts the most recent promotion moved back to what it replaced, together.
    Nothing to roll back (no promotion, or one that replaced no earlier version) is a note, not an error."""
    productions = {name: prompt_state(client, name).alias(PRODUCTION) for name in names}
    current = {name: int(v.version) if v else None for name, v in productions.items()}
    promoted = {name: v for name, v in productions.items() if v is not None and PROMOTED_AT in (v.tags or {})}
    if not promoted:
        return ProductionChange(_unchanged(current, "not rolled back"),
                                note=f"Nothing to roll back: no promoted production version of {names}")
    last = max(promoted.values(), key=lambda v: int(v.tags[PROMOTED_AT])).tags[PROMOTED_AT]
    # moved by the promotion being undone (not by an earlier one), with the version each replaced
    undone = {name: (v, v.tags.get(PREVIOUS_PRODUCTION)) for name, v in promoted.items() if v.tags[PROMOTED_AT] == last}
    if not any(previous for _, previous in undone.values()):
        return ProductionChange(_unchanged(current, "not rolled back"), note="Nothing to roll back: the last "
                                f"promotion ({', '.join(f'{n} v{v.version}' for n, (v, _) in undone.items())}) "
                                "replaced no earlier production version")
    for name, (version, previous) in undone.items():
        if not previous:  # undoing only part of it would split prompts evaluated together
            raise RegistryError(f"prompt {name!r}: production version {version.version} records no earlier "
                                "production version")
    moves = [(name, int(version.version), int(previous)) for name, (version, previous) in undone.items()]
    stamp = str(int(time.time() * 1000))
    _all_or_nothing(client, moves, lambda name, before, _after: client.set_prompt_version_tag(
        name, before, ROLLED_BACK_AT, stamp))
    return ProductionChange([(name, after, before, "rolled back") for name, before, after in moves])


def history_rows(state: PromptState, limit: int = 10) -> list[tuple]:
    """(version, aliases, hash, created, source, commit) for the newest versions: the asset's preview."""
    rows = []
    for v in state.versions[:limit]:
        tags = v.tags or {}
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime((v.creation_timestamp or 0) / 1000))
        rows.append((v.version, ", ".join(state.aliases_of(v.version)), tags.get(HASH_TAG, "")[:12], created,
                     tags.get(SOURCE_TAG, ""), (tags.get(COMMIT_TAG) or "")[:12]))
    return rows
