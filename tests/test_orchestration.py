"""The Dagster definitions, the traces assets and checks on a real instance, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.alerts.assets import alert_incidents
from assets.traces.assets import CHECKS, trace_warehouse
from orchestration.jobs import full_refresh_job
from resources.settings import mask_uri, scrub
from resources.mlflow import MlflowResource
from resources.serving import _is_our_server, _port
from resources.warehouse import CONTRACT_TABLES, WarehouseResource
from tests.conftest import LLMOPS, Store, llmops_env

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_definitions_load_with_every_asset_in_its_group():
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {**dict.fromkeys(CONTRACT_TABLES, "traces"),
                      **dict.fromkeys(["dimension_facts", "insights_rollups", "root_causes", "insights_report"], "insights"),
                      "prompt_registry": "prompts", "prompt_production": "prompts", "prompt_evals": "evals",
                      "agent_model": "models", "agent_deployment": "models",
                      "labeling_sessions": "labeling", "labeling_progress": "labeling",
                      "alert_incidents": "alerts", "endpoint_health": "alerts"}
    assert all(graph.get(key).description for key in graph.get_all_asset_keys())
    assert {job.name for job in defs.jobs} == {"main", "warehouse_refresh", "full_refresh", "prompt_release",
                                              "prompt_rollback", "evals", "agent_release", "agent_rollback", "labeling",
                                              "check_endpoint"}
    assert [s.name for s in defs.sensors] == ["prompt_files_sensor", "negative_feedback_sensor",
                                              "insights_automation_sensor"]
    assert {s.name: s.job_name for s in defs.schedules} == {"warehouse_refresh_hourly": "warehouse_refresh",
                                                           "evals_daily": "evals",
                                                           "endpoint_health_check": "check_endpoint"}
    for job in defs.jobs:  # each launches from the UI's Launchpad as it opens: no config to fill in
        dg.validate_run_config(defs.resolve_job_def(job.name), {})


def _load_definitions(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = ("from orchestration.definitions import build_definitions; defs = build_definitions(); "
            "print([(s.name, s.cron_schedule, s.default_status.value) for s in defs.schedules], "
            "[s.default_status.value for s in defs.sensors])")
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_schedules_and_sensors_follow_the_environment():
    done = _load_definitions({"LLMOPS_AUTOMATION": "off", "LLMOPS_REFRESH_CRON": "*/15 * * * *"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("[('warehouse_refresh_hourly', '*/15 * * * *', 'STOPPED'), "
                                   "('evals_daily', '0 6 * * *', 'STOPPED'), ('endpoint_health_check', '*/5 * * * *', 'STOPPED')] "
                                   "['STOPPED', 'STOPPED', 'STOPPED']")
    on = _load_definitions({"LLMOPS_AUTOMATION": "on"})
    assert on.stdout.strip().endswith("['RUNNING', 'RUNNING', 'RUNNING']"), on.stderr
    bad = _load_definitions({"LLMOPS_EVALS_CRON": "daily at six"})
    assert bad.returncode != 0 and "LLMOPS_EVALS_CRON must be a 5-field cron string" in bad.stderr
    bad = _load_definitions({"LLMOPS_AUTOMATION": "maybe"})
    assert bad.returncode != 0 and "LLMOPS_AUTOMATION must be 'on' or 'off', not 'maybe'" in bad.stderr


def test_importing_the_definitions_reads_no_configuration():
    code = ("import os, orchestration.definitions; "
            "print(os.environ.get('MLFLOW_TRACKING_URI'), os.environ.get('LLMOPS_DUCKDB_PATH'))")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LLMOPS_DUCKDB_PATH")}
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
                          env={**env, "LLMOPS_AUTOMATION": "maybe", "LLMOPS_REFRESH_CRON": "never"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None None"


def test_materialize_writes_warehouse_and_passes_checks(seeded_store: Store, warehouse_path: str):
    resources = {
        "mlflow": MlflowResource(tracking_uri=seeded_store.uri),
        "warehouse": WarehouseResource(path=warehouse_path),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([trace_warehouse], resources=resources, instance=instance)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == sum(map(len, CHECKS.values())) == 13 and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
        traces = next(m for m in result.asset_materializations_for_node("trace_warehouse") if m.asset_key.path == ["traces"])
        assert traces.metadata["rows"].value == len(seeded_store.trace_ids)
        assert traces.metadata["mode"].value == "full"
        assert "| request_time |" in traces.metadata["latest_traces"].value
        again = dg.materialize([trace_warehouse], resources=resources, instance=instance)
        traces = next(m for m in again.asset_materializations_for_node("trace_warehouse") if m.asset_key.path == ["traces"])
        assert traces.metadata["mode"].value == "unchanged"


def test_orphan_rows_fail_the_check(seeded_store: Store, warehouse_path: str):
    resources = {
        "mlflow": MlflowResource(tracking_uri=seeded_store.uri),
        "warehouse": WarehouseResource(path=warehouse_path),
    }
    with dg.instance_for_test() as instance:
        dg.materialize([trace_warehouse], resources=resources, instance=instance)
        with duckdb.connect(warehouse_path) as con:
            con.execute("INSERT INTO spans (trace_id, span_id, experiment_id, start_time_ns) VALUES ('tr-ghost', 's1', '1', 0)")
        result = dg.materialize([trace_warehouse], resources=resources, instance=instance, raise_on_error=False)
        failed = {(c.asset_key.to_user_string(), c.check_name) for c in result.get_asset_check_evaluations() if not c.passed}
        assert failed == {("spans", "no_orphans")}
        # The full_refresh job (over the traces group alone here) rebuilds the tables: the stray row is gone.
        refresh = dg.Definitions(assets=[trace_warehouse, alert_incidents], jobs=[full_refresh_job], resources=resources)
        refreshed = refresh.resolve_job_def("full_refresh").execute_in_process(instance=instance)
        assert all(c.passed for c in refreshed.get_asset_check_evaluations())
        traces = next(m for m in refreshed.asset_materializations_for_node("trace_warehouse") if m.asset_key.path == ["traces"])
        assert (traces.metadata["mode"].value, traces.metadata["deleted_traces"].value) == ("full", 0)


def test_dagster_cli_materializes_traces_group_from_env(seeded_store: Store, tmp_path: Path):
    """`dagster asset materialize` honours MLFLOW_TRACKING_URI and LLMOPS_DUCKDB_PATH."""
    warehouse = tmp_path / "elsewhere" / "wh.duckdb"
    env = llmops_env(tmp_path, MLFLOW_TRACKING_URI=seeded_store.uri, LLMOPS_DUCKDB_PATH=str(warehouse),
               DAGSTER_HOME=str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orchestration.definitions", "--select", "group:traces"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM traces").fetchone()[0] == len(seeded_store.trace_ids)


@pytest.mark.parametrize("command", [[], ["demo"], ["seed-demo"], ["extract"], ["config"], ["ui"], ["serve"],
                                     ["release-prompts"], ["rollback-prompts"], ["deploy"], ["rollback-agent"],
                                     ["stop-serving"]])
def test_every_command_has_help(command: list[str]):
    done = subprocess.run([*LLMOPS, *command, "--help"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout


@pytest.mark.slow
def test_demo_command_seeds_materializes_and_reports(tmp_path: Path):
    done = subprocess.run([*LLMOPS, "demo", "--traces", "12"], cwd=PROJECT_DIR, env=llmops_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    home = tmp_path / "home"
    assert f"sqlite:///{home}/mlflow.db" in done.stdout
    assert "llmops ui" in done.stdout and "mlflow ui" in done.stdout
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM traces").fetchone()[0] == 12
    assert (home / "dagster" / "dagster.yaml").exists()
    assert "support_system v1 (candidate, production)" in done.stdout  # the demo's prompts were synced, evaluated, promoted
    # A second run reuses the store instead of seeding again.
    again = subprocess.run([*LLMOPS, "demo", "--traces", "12"], cwd=PROJECT_DIR, env=llmops_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already has traces" in again.stdout
    # Deploy the registered agent locally from the command line, then stop it: no server is left behind.
    deployed = subprocess.run([*LLMOPS, "deploy"], cwd=PROJECT_DIR, env=llmops_env(tmp_path), capture_output=True, text=True,
                              timeout=600)
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    state = json.loads((home / "serving" / "dev.json").read_text())["active"]
    stopped = subprocess.run([*LLMOPS, "stop-serving"], cwd=PROJECT_DIR, env=llmops_env(tmp_path), capture_output=True,
                             text=True, timeout=120)
    assert stopped.returncode == 0 and f"Stopped the server of version 1 at {state['url']}" in stopped.stdout
    assert not _is_our_server(state["pid"], _port(state["url"]))


@pytest.mark.parametrize(("uri", "masked"), [
    ("postgresql://admin:s3cret@127.0.0.1:1/mlflow", "postgresql://admin:***@127.0.0.1:1/mlflow"),
    ("postgresql://admin@127.0.0.1:1/mlflow?sslmode=disable&password=s3cret",
     "postgresql://admin@127.0.0.1:1/mlflow?sslmode=disable&password=***"),
])
def test_bad_tracking_uri_fails_with_masked_uri(tmp_path: Path, uri: str, masked: str):
    """The password is in no output, and in no file of the platform's home: Dagster's run and event storage
    and compute logs included."""
    env = llmops_env(tmp_path, MLFLOW_TRACKING_URI=uri)
    configured = subprocess.run([*LLMOPS, "config"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                                timeout=120)
    assert f"MLFLOW_TRACKING_URI={masked}" in configured.stdout
    done = subprocess.run([*LLMOPS, "extract"], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    output = configured.stdout + configured.stderr + done.stdout + done.stderr
    assert masked in output
    assert "s3cret" not in output
    files = [path for path in (tmp_path / "home").rglob("*") if path.is_file()]
    assert any(path.name == "runs.db" for path in files)  # the run was recorded, so the search below means something
    assert [path for path in files if b"s3cret" in path.read_bytes()] == []


def test_mask_uri_hides_every_kind_of_secret():
    assert mask_uri("mysql+pymysql://u:p%40ss@db:3306/mlflow?charset=utf8") == "mysql+pymysql://u:***@db:3306/mlflow?charset=utf8"
    assert mask_uri("https://h/mlflow?api_key=K1&sig=S1&signed=1&Token=T1") == "https://h/mlflow?api_key=***&sig=***&signed=1&Token=***"
    assert mask_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert mask_uri("databricks") == "databricks"
    uri = "postgresql://u:p%40ss@h/db?password=q%20w"
    assert scrub("libpq: password=p@ss failed for p%40ss, then q w and q%20w", uri) == (
        "libpq: password=*** failed for ***, then *** and ***")


NEW_STORE_SCRIPT = """
import sys
from mlflow import MlflowClient
from resources.mlflow import MlflowResource

MlflowResource(tracking_uri=sys.argv[1]).initialize_store()  # what each Dagster step does first
MlflowClient(sys.argv[1]).search_experiments()
"""


def test_steps_opening_a_new_store_at_once_create_it_once(tmp_path: Path):
    """Three processes open a brand-new SQLite store at the same instant (parallel steps of `group:prompts`);
    without the resource's lock (the script minus initialize_store) MLflow's migrations race ("table
    experiments already exists") and two of three fail."""
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", NEW_STORE_SCRIPT, uri], cwd=PROJECT_DIR,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)}, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(e[-1500:] for e in errors)


def test_extract_from_another_store_is_refused_until_switched(seeded_store: Store, empty_store: Path, tmp_path: Path):
    """A mistyped MLFLOW_TRACKING_URI used to empty the warehouse (600 -> 0) with every check passing."""
    env = llmops_env(tmp_path, MLFLOW_TRACKING_URI=seeded_store.uri)
    assert subprocess.run([*LLMOPS, "extract"], cwd=PROJECT_DIR, env=env, capture_output=True, timeout=300).returncode == 0
    other = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{empty_store}"}
    refused = subprocess.run([*LLMOPS, "extract"], cwd=PROJECT_DIR, env=other, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0
    assert f"copies the tracking store {seeded_store.uri}, but the source is now sqlite:///{empty_store}" in refused.stderr
    warehouse = tmp_path / "home" / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM traces").fetchone()[0] == len(seeded_store.trace_ids)
    switched = subprocess.run([*LLMOPS, "extract", "--switch-source"], cwd=PROJECT_DIR, env=other,
                              capture_output=True, text=True, timeout=300)
    assert switched.returncode == 0, switched.stderr[-2000:]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM traces").fetchone()[0] == 0


def test_a_step_finds_its_new_store_created_before_it_runs(tmp_path: Path):
    """MlflowResource's setup_for_execution (every step that uses it) creates a brand-new store first."""
    from resources.mlflow import _has_schema

    store = tmp_path / "new" / "mlflow.db"

    @dg.asset
    def probe(mlflow: MlflowResource) -> None:
        assert _has_schema(store), "the step ran before its store was created"

    assert dg.materialize([probe], resources={"mlflow": MlflowResource(tracking_uri=f"sqlite:///{store}")}).success
