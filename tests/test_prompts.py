"""Prompts as code on a real MLflow store: validation, sync by content hash, and the candidate alias."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets.prompts.assets import prompt_registry
from assets.prompts.files import PromptFileError, load_prompt_files
from assets.prompts.registry import (
    RegistryError,
    git_commit,
    promote_together,
    prompt_state,
    rollback_last_promotion,
    sync_prompts,
)
from assets.vocabulary import CANDIDATE, COMMIT_TAG, EVAL_RUN_TAG, HASH_TAG, NOTE, PRODUCTION, SOURCE_TAG
from resources.mlflow import MlflowResource
from resources.user_files import UserFilesResource
from tests.conftest import PROJECT_DIR, edit


@pytest.fixture
def registry(empty_store: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{empty_store}")


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """A copy of the project's prompt files that a test may edit."""
    return Path(shutil.copytree(PROJECT_DIR / "prompts", tmp_path / "prompts"))


def snapshot(client: MlflowClient) -> dict:
    """Every prompt's versions with their hashes and aliases: compared to prove nothing changed."""
    return {
        p.name: (state := prompt_state(client, p.name)).aliases
        | {v.version: (v.tags or {}).get(HASH_TAG) for v in state.versions}
        for p in client.search_prompts()
    }


def test_syncing_twice_creates_no_second_version(registry: MlflowClient, prompts_dir: Path):
    first = sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    assert {s.name: (s.version, s.created) for s in first} == {"support_system": (1, True), "support_answer": (1, True)}
    before = snapshot(registry)
    again = sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    assert [s.created for s in again] == [False, False]
    assert snapshot(registry) == before
    version = registry.get_prompt_version_by_alias("support_system", CANDIDATE)
    assert version.tags[SOURCE_TAG] == "prompts/support_system.yaml"
    assert version.tags[HASH_TAG] == load_prompt_files(prompts_dir)[1].prompt.content_hash()
    assert version.model_config == {"temperature": 0.0, "max_tokens": 256}
    assert COMMIT_TAG not in version.tags  # the copy is outside any git checkout


def test_editing_one_template_creates_exactly_one_new_version(registry: MlflowClient, prompts_dir: Path):
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    # a comment or a different YAML layout is no change of content
    path = prompts_dir / "support_answer.yaml"
    path.write_text("# reformatted\n" + path.read_text().replace("variables: [question, context, tools]",
                                                                 "variables:\n  - question\n  - context\n  - tools"))
    assert not any(s.created for s in sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir))
    edit(path, "Tools: {{tools}}", "Tool results: {{tools}}")
    synced = {s.name: s for s in sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)}
    assert (synced["support_answer"].version, synced["support_answer"].created) == (2, True)
    assert (synced["support_system"].version, synced["support_system"].created) == (1, False)
    assert [v.version for v in prompt_state(registry, "support_system").versions] == [1]
    candidate = registry.get_prompt_version_by_alias("support_answer", CANDIDATE)
    assert candidate.version == 2 and "Tool results: {{tools}}" in candidate.template
    assert prompt_state(registry, "support_answer").aliases_of(1) == []


class AliasFailsClient(MlflowClient):
    """A real client whose alias call fails, as when the server drops between two requests."""

    def set_prompt_alias(self, name, alias, version):
        raise ConnectionError("tracking server went away")


def test_a_version_and_its_alias_move_together(registry: MlflowClient, prompts_dir: Path):
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    before = snapshot(registry)
    edit(prompts_dir / "support_system.yaml", "concise", "brief")
    failing = AliasFailsClient(registry.tracking_uri)
    with pytest.raises(ConnectionError):
        sync_prompts(failing, load_prompt_files(prompts_dir), prompts_dir)
    assert snapshot(registry) == before  # the version registered before the failure was removed again
    synced = {s.name: s for s in sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)}
    candidate = registry.get_prompt_version_by_alias("support_system", CANDIDATE)
    assert synced["support_system"].created and candidate.version == synced["support_system"].version
    assert "brief" in candidate.template


class SecondPromotionFails(MlflowClient):
    """A real client that loses the server when moving the second prompt's production alias."""

    def set_prompt_alias(self, name, alias, version):
        if (name, alias) == ("support_answer", PRODUCTION):
            raise ConnectionError("tracking server went away")
        return super().set_prompt_alias(name, alias, version)


def test_prompts_evaluated_together_are_promoted_together_or_not_at_all(registry: MlflowClient, prompts_dir: Path):
    def production() -> dict[str, int]:
        return {name: prompt_state(registry, name).aliases.get(PRODUCTION) for name in ("support_system", "support_answer")}

    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    promote_together(registry, {"support_system": 1, "support_answer": 1}, {EVAL_RUN_TAG: "first"})
    edit(prompts_dir / "support_system.yaml", "concise", "brief")
    edit(prompts_dir / "support_answer.yaml", "Tools:", "Tool results:")
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    with pytest.raises(ConnectionError):
        promote_together(SecondPromotionFails(registry.tracking_uri), {"support_system": 2, "support_answer": 2}, {})
    assert production() == {"support_system": 1, "support_answer": 1}  # the first move was undone
    promoted = promote_together(registry, {"support_system": 2, "support_answer": 2}, {EVAL_RUN_TAG: "second"})
    assert [r[3] for r in promoted.rows] == ["promoted", "promoted"] and not promoted.note
    assert production() == {"support_system": 2, "support_answer": 2}
    assert registry.get_prompt_version("support_answer", 2).tags[EVAL_RUN_TAG] == "second"
    again = promote_together(registry, {"support_system": 2, "support_answer": 2}, {EVAL_RUN_TAG: "third"})
    assert again.note == "Nothing to promote: support_system v2, support_answer v2 already production"
    assert registry.get_prompt_version("support_answer", 2).tags[EVAL_RUN_TAG] == "second"
    rolled = rollback_last_promotion(registry, ["support_system", "support_answer"])
    assert rolled.rows == [("support_system", 1, 2, "rolled back"), ("support_answer", 1, 2, "rolled back")]
    assert production() == {"support_system": 1, "support_answer": 1} and not rolled.note


def test_rolling_back_part_of_a_promotion_is_refused(registry: MlflowClient, prompts_dir: Path):
    """A promotion that replaced an earlier version of one prompt but was the first of another cannot be undone
    for one alone (the prompts were evaluated together): a failure, not a note, and nothing moves."""
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    promote_together(registry, {"support_system": 1}, {})
    edit(prompts_dir / "support_system.yaml", "concise", "brief")
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    promote_together(registry, {"support_system": 2, "support_answer": 1}, {})
    before = snapshot(registry)
    with pytest.raises(RegistryError, match="'support_answer': production version 1 records no earlier"):
        rollback_last_promotion(registry, ["support_system", "support_answer"])
    assert snapshot(registry) == before


def test_unchanged_files_register_nothing_and_say_so(registry: MlflowClient, prompts_dir: Path, tmp_path: Path):
    resources = {"mlflow": MlflowResource(tracking_uri=registry.tracking_uri),
                 "user_files": UserFilesResource(prompts_dir=str(prompts_dir), evals_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        first = dg.materialize([prompt_registry], resources=resources, instance=instance)
        second = dg.materialize([prompt_registry], resources=resources, instance=instance)
        logs = [(e.level, e.user_message) for e in instance.all_logs(second.run_id)]
    assert NOTE not in first.asset_materializations_for_node("prompt_registry")[0].metadata
    note = second.asset_materializations_for_node("prompt_registry")[0].metadata[NOTE].value
    assert note == "Nothing to register: every prompt file's content is already its latest version"
    assert (logging.INFO, note) in logs


def test_git_commit_is_recorded_when_known():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the project is not a git checkout")
    assert git_commit(PROJECT_DIR / "prompts").removesuffix("-dirty") == head.stdout.strip()


VALID = """name: greet
template: "Hello {{who}}"
variables: [who]
"""
# (files to write, the problem's file:line, a phrase of the reason)
MALFORMED = {
    "bad yaml": ({"a.yaml": "name: greet\ntemplate: [unclosed\nvariables: []\n"}, "prompts/a.yaml:3", "invalid YAML"),
    "missing template": ({"a.yaml": "name: greet\nvariables: []\n"}, "prompts/a.yaml:1", "template: Field required"),
    "undeclared variable": ({"a.yaml": "name: greet\ntemplate: Hi {{who}} {{where}}\nvariables: [who]\n"},
                            "prompts/a.yaml:3", "uses ['where'] but they are not declared"),
    "unused variable": ({"a.yaml": "name: greet\ntemplate: Hi {{who}}\nvariables: [who, when]\n"},
                        "prompts/a.yaml:3", "['when'] declared but not used"),
    "duplicate names": ({"a.yaml": VALID, "b.yaml": VALID}, "prompts/b.yaml:1", "already defined in prompts/a.yaml"),
    "wrong type": ({"a.yaml": VALID + "model_parameters:\n  temperature: hot\n"}, "prompts/a.yaml:5",
                   "model_parameters.temperature: Input should be a valid number"),
    "tag not a string": ({"a.yaml": VALID + "tags:\n  team: 7\n"}, "prompts/a.yaml:5", "tags.team: Input should be a valid string"),
    "bad placeholder": ({"a.yaml": "name: greet\ntemplate: Hi {{ who is }}\nvariables: []\n"}, "prompts/a.yaml:2",
                        "malformed placeholder"),
    "bad name": ({"a.yaml": VALID.replace("greet", "greet me!")}, "prompts/a.yaml:1", "name: String should match"),
    "unknown field": ({"a.yaml": VALID + "temprature: 0.2\n"}, "prompts/a.yaml:4", "temprature: Extra inputs"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_file_names_its_problem_and_changes_nothing(case, registry: MlflowClient, prompts_dir: Path,
                                                                tmp_path: Path):
    sync_prompts(registry, load_prompt_files(prompts_dir), prompts_dir)
    before = snapshot(registry)
    files, where, reason = MALFORMED[case]
    edit(prompts_dir / "support_answer.yaml", "Tools: {{tools}}", "Tool results: {{tools}}")  # a valid change
    for name, text in files.items():
        (prompts_dir / name).write_text(text)
    resources = {"mlflow": MlflowResource(tracking_uri=registry.tracking_uri),
                 "user_files": UserFilesResource(prompts_dir=str(prompts_dir), evals_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        result = dg.materialize([prompt_registry], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert f"{where}: " in message and reason in message, message
    with pytest.raises(PromptFileError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        load_prompt_files(prompts_dir)
    assert snapshot(registry) == before  # not even the valid edit was registered


def test_unreachable_tracking_server_fails_clearly(prompts_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = "http://admin:s3cret@127.0.0.1:9"  # the discard port: nothing listens
    resources = {"mlflow": MlflowResource(tracking_uri=uri),
                 "user_files": UserFilesResource(prompts_dir=str(prompts_dir), evals_dir=str(tmp_path))}
    with dg.instance_for_test() as instance:
        result = dg.materialize([prompt_registry], resources=resources, instance=instance, raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    assert "MLflow at http://admin:***@127.0.0.1:9 failed" in error.message, error.message
    assert "s3cret" not in error.to_string() and "s3cret" not in "".join(error.stack)
