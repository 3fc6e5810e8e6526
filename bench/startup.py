"""Benchmark of command start-up on a small team's store (600 demo-agent traces, warehouse up to date): the
wall time of `dagster asset materialize --select group:traces` and of `llmops extract`, and their start-up (from
launching the process to the first step starting, read from the Dagster instance's event log), against the
least any Dagster command pays (`python -c "import dagster"`) in the same run.

    uv run python bench/startup.py                      # this checkout
    uv run python bench/startup.py --project /tmp/old   # another checkout (e.g. a git worktree), same venv
    uv run python bench/startup.py --no-bytecode        # as on a machine where Python caches no bytecode

The store is seeded once with `llmops seed-demo --traces 600` under bench/data/startup-600 (git-ignored) and
extracted once, so each timed run is the hourly refresh of a store with nothing new. Results go to
bench/results/startup-600.json (`--label` names the entry).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
TRACES = 600

COMMANDS = {
    "dagster asset materialize --select group:traces": ["-m", "dagster", "asset", "materialize", "-m",
                                                        "orchestration.definitions", "--select", "group:traces"],
    "llmops extract": ["-m", "orchestration.cli", "extract"],
}


def command_env(home: Path, project: Path, no_bytecode: str | None) -> dict[str, str]:
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PYTHONPATH": str(project)}
    for name in ("MLFLOW_TRACKING_URI", "LLMOPS_DUCKDB_PATH", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)  # the bench's own home decides
    if no_bytecode:
        env |= {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": no_bytecode}  # an empty cache: compile all
    return env


def ensure_home(data_dir: Path) -> Path:
    home = data_dir / f"startup-{TRACES}"
    if not (home / "warehouse.duckdb").exists():
        env = command_env(home, PROJECT_DIR, None)
        for args in (["seed-demo", "--traces", str(TRACES)], ["extract"]):
            subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, cwd=PROJECT_DIR, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return home


def first_step_start(home: Path) -> float:
    """When the newest run's first step started (epoch seconds), from the instance's event log."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        run = instance.get_runs(limit=1)[0]
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        return min(event.timestamp for event in starts)


def timed(args: list[str], env: dict, project: Path) -> tuple[float, float]:
    """The command's wall time, and when it started (epoch seconds)."""
    started = time.time()
    subprocess.run([sys.executable, *args], env=env, cwd=project, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.time() - started, started


def timed_job(args: list[str], env: dict, project: Path, home: Path) -> tuple[float, float]:
    """A job command's wall time, and its start-up: from launching the process to its run's first step."""
    wall, started = timed(args, env, project)
    return wall, first_step_start(home) - started


def run(project: Path, data_dir: Path, repeats: int, no_bytecode: bool) -> dict:
    home = ensure_home(data_dir)
    with tempfile.TemporaryDirectory() as empty_cache:
        env = command_env(home, project, empty_cache if no_bytecode else None)
        floor = [timed(["-c", "import dagster"], env, project)[0] for _ in range(repeats)]
        results = {"python -c 'import dagster'": {"wall_s": statistics.median(floor)}}
        for name, args in COMMANDS.items():
            timed(args, env, project)  # warm the page cache
            runs = [timed_job(args, env, project, home) for _ in range(repeats)]
            wall, startup = statistics.median(w for w, _ in runs), statistics.median(s for _, s in runs)
            results[name] = {"wall_s": round(wall, 3), "startup_s": round(startup, 3),
                             "wall_vs_import_dagster": round(wall / statistics.median(floor), 2)}
            print(f"{name}: {wall:.2f} s wall, {startup:.2f} s to the first step "
                  f"({wall / statistics.median(floor):.1f}× `import dagster`)", flush=True)
    return {"project": str(project), "no_bytecode": no_bytecode, "repeats": repeats, "traces": TRACES,
            "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=PROJECT_DIR, help="the checkout whose commands are timed")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data", help="where the store is kept")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command (the median is kept)")
    parser.add_argument("--no-bytecode", action="store_true", help="run without any cached bytecode")
    parser.add_argument("--label", default="this checkout", help="the name of this entry in the results file")
    options = parser.parse_args()
    result = run(options.project.resolve(), options.data_dir, options.repeats, options.no_bytecode)
    path = BENCH_DIR / "results" / f"startup-{TRACES}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(saved | {options.label: result}, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
