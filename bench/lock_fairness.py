"""Benchmark: an extract while API clients read the warehouse, as a ratio of the same extract on an idle warehouse.

    uv run python bench/lock_fairness.py --size 100000 --clients 4

DuckDB lets one process write a file while no other process has it open; readers of `llmops serve` open it for
each request. A writer waiting for the lock announces itself and readers hold off (resources/warehouse.py), so
a stream of requests cannot starve it. Both runs are full refreshes (a new file swapped in) in a child process;
the clients are threads posting `traffic-cost/volume` to a real `llmops serve` over HTTP, all the time.
Results go to bench/results/lock-fairness-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.insights import ensure_warehouse, serving  # noqa: E402
from bench.trace_extract import timed_extract  # noqa: E402
from orchestration.api import PREFIX  # noqa: E402


def _hammer(url: str, experiment_id: str, stop: threading.Event, counts: list[int], deadline_s: float) -> None:
    """Post requests back to back until told to stop (or the deadline passes); count the answers."""
    body = json.dumps({"experiment_ids": [experiment_id], "time_bucket": "day"}).encode()
    request = urllib.request.Request(f"{url}{PREFIX}/traffic-cost/volume", data=body,
                                     headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + deadline_s
    while not stop.is_set() and time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
        counts.append(1)


def run(size: int, data_dir: Path, clients: int, runs: int) -> dict:
    uri, built = ensure_warehouse(size, data_dir)
    work = data_dir / f"fairness-{size}" / "warehouse.duckdb"
    work.parent.mkdir(exist_ok=True)
    shutil.copyfile(built, work)
    import duckdb

    with duckdb.connect(str(work), read_only=True) as con:
        experiment_id = con.execute("SELECT experiment_id FROM traces LIMIT 1").fetchone()[0]
    idle = [timed_extract(uri, work, full_refresh=True)["seconds"] for _ in range(runs)]
    with serving(work) as url:
        loaded, answered = [], []
        for _ in range(runs):
            stop, counts = threading.Event(), []
            threads = [threading.Thread(target=_hammer, args=(url, experiment_id, stop, counts, 600))
                       for _ in range(clients)]
            for thread in threads:
                thread.start()
            time.sleep(2)  # the clients are at full speed
            loaded.append(timed_extract(uri, work, full_refresh=True)["seconds"])
            stop.set()
            for thread in threads:
                thread.join()
            answered.append(len(counts))
    # The worst loaded run is the point (a starved writer is unlucky, not slow), against the best idle one.
    result = {"size": size, "clients": clients, "idle_runs_s": [round(t, 2) for t in idle],
              "loaded_runs_s": [round(t, 2) for t in loaded],
              "worst_loaded_over_best_idle": round(max(loaded) / min(idle), 2), "requests_answered": answered}
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="store size in traces")
    parser.add_argument("--clients", type=int, default=4, help="API clients reading during the extract")
    parser.add_argument("--runs", type=int, default=3, help="extracts per side")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data", help="where stores are built and kept")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.size, args.data_dir, args.clients, args.runs)
    (BENCH_DIR / "results" / f"lock-fairness-{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
