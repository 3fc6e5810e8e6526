"""The `llmops` commands as a user sees them (real subprocesses): quiet output with a Results block, Dagster's
events with --verbose, a failure that ends with its reason and the log's path, and settings printed and checked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import duckdb

from resources import settings
from tests.conftest import LLMOPS, PROJECT_DIR, Store, llmops_env

ANSI_ESCAPE = re.compile(r"\x1b\[")


def _llmops(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMOPS, *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)


def _log_path(output: str) -> Path:
    return Path(re.search(r"[Ff]ull log: (\S+\.log)", output).group(1))


def test_extract_prints_a_line_per_step_and_the_counts_then_verbose_shows_dagster_events(
        seeded_store: Store, tmp_path: Path):
    env = llmops_env(tmp_path, MLFLOW_TRACKING_URI=seeded_store.uri)
    done = _llmops(env, "extract")
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    lines = output.strip().splitlines()
    assert len(lines) <= 17, output  # 65 lines before: Dagster's DEBUG events
    assert not ANSI_ESCAPE.search(output) and "DEBUG" not in output and "Type check" not in output, output
    steps = [line.split()[1] for line in lines if line.startswith("  ok ")]
    assert steps[0] == "trace_warehouse" and steps[-1] == "insights_report"  # the report shows the incidents
    assert sorted(steps[1:-1]) == ["alert_incidents", "alert_incidents_no_open_incidents", "dimension_facts",
                                   "insights_rollups", "root_causes"]
    assert "alerts: 0 of 3 rule checks firing; incidents: 0 opened, 0 resolved, 0 open; notifications: 0 sent" in output
    warehouse = tmp_path / "home" / "warehouse.duckdb"
    assert f"traces: {len(seeded_store.trace_ids)} new or changed, 0 deleted (full); " \
           f"{len(seeded_store.trace_ids)} in the warehouse {warehouse}" in output
    log = _log_path(output)
    assert log.parent == tmp_path / "home" / "logs" and "STEP_SUCCESS" in log.read_text()

    again = _llmops(env, "extract", "--verbose")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "STEP_SUCCESS" in again.stdout + again.stderr  # Dagster's console logger
    assert "traces: 0 new or changed, 0 deleted (unchanged)" in again.stdout
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM traces").fetchone()[0] == len(seeded_store.trace_ids)


def test_a_malformed_prompt_file_fails_with_its_file_line_once_and_the_log_path(tmp_path: Path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for source in (PROJECT_DIR / "prompts").glob("*.yaml"):
        (prompts / source.name).write_text(source.read_text())
    broken = sorted(prompts.glob("*.yaml"))[0]
    lines = broken.read_text().splitlines()
    lines[2] = "  bad: [unclosed"
    broken.write_text("\n".join(lines) + "\n")
    done = _llmops(llmops_env(tmp_path, LLMOPS_PROMPTS_DIR=str(prompts)), "release-prompts")
    assert done.returncode == 1
    output = done.stdout + done.stderr
    reason = f"{broken.name}:3: invalid YAML"
    assert output.count(reason) == 1 and "Traceback" not in output, output
    last = done.stderr.strip().splitlines()
    assert last[0].startswith("Error: Job 'prompt_release' failed: prompt_registry: ") and reason in last[1], last
    log = _log_path(last[-1]).read_text()
    assert last[-1].startswith("Full log: ") and "STEP_FAILURE" in log and reason in log
    assert "skipped prompt_evals (an upstream step failed)" in done.stdout


def test_config_prints_every_setting_with_secrets_masked(tmp_path: Path):
    done = _llmops(llmops_env(tmp_path, LLMOPS_API_TOKEN="s3cret-token",
                        MLFLOW_TRACKING_URI="postgresql://app:pa55word@db:5432/mlflow"), "config", timeout=120)
    assert done.returncode == 0, done.stderr
    printed = dict(line.split("=", 1) for line in done.stdout.strip().splitlines())
    assert list(printed) == [s.name for s in settings.SETTINGS]
    assert printed["LLMOPS_API_TOKEN"] == "***" and printed["LLMOPS_API_TOKENS"] == "(unset)"
    assert printed["MLFLOW_TRACKING_URI"] == "postgresql://app:***@db:5432/mlflow"
    assert "s3cret" not in done.stdout + done.stderr and "pa55word" not in done.stdout + done.stderr
    assert printed["DAGSTER_HOME"] == str(tmp_path / "home" / "dagster")


def test_config_names_every_bad_setting_and_commands_refuse_to_start_with_one(tmp_path: Path):
    bad = {"LLMOPS_AUTOMATION": "maybe", "LLMOPS_REFRESH_CRON": "never", "LLMOPS_MAX_DELETE_SHARE": "2",
           "LLMOPS_TRACE_SOURCE": "odbc", "LLMOPS_PUBLIC_URL": "localhost:8000",
           "LLMOPS_OUTCOMES": str(tmp_path / "missing.yaml"), "LLMOPS_FEEDBACK_SETTLE_S": "soon"}
    done = _llmops(llmops_env(tmp_path, **bad), "config", timeout=120)
    assert done.returncode == 1
    assert "LLMOPS_AUTOMATION must be 'on' or 'off', not 'maybe'" in done.stderr
    assert "LLMOPS_REFRESH_CRON must be a 5-field cron string such as '0 * * * *', not 'never'" in done.stderr
    assert "LLMOPS_MAX_DELETE_SHARE must be between 0 and 1, not '2'" in done.stderr
    assert "LLMOPS_TRACE_SOURCE must be 'auto' or 'sql' or 'api', not 'odbc'" in done.stderr
    assert "LLMOPS_PUBLIC_URL must be an http(s):// URL, not 'localhost:8000'" in done.stderr
    assert f"LLMOPS_OUTCOMES must name an existing file, not '{tmp_path / 'missing.yaml'}'" in done.stderr
    assert "LLMOPS_FEEDBACK_SETTLE_S must be a number, not 'soon'" in done.stderr

    refused = _llmops(llmops_env(tmp_path, LLMOPS_AUTOMATION="maybe"), "extract", timeout=120)
    assert refused.returncode == 1 and "Running job" not in refused.stdout
    assert refused.stderr.strip() == ("Error: LLMOPS_AUTOMATION must be 'on' or 'off', not 'maybe' "
                                      "(see `llmops config`)")


def test_a_rollback_with_nothing_to_undo_succeeds_and_says_so(tmp_path: Path):
    done = _llmops(llmops_env(tmp_path), "rollback-prompts")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "  ok      prompt_production" in done.stdout
    assert ("  prompt_production: Nothing to roll back: no promoted production version of "
            "['support_system', 'support_answer']") in done.stdout.split("\nResults\n")[1]
