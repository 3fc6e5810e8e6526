"""Benchmark of the trace extract: full extract vs a bare scan, vs MLflow's search_traces, incremental vs full,
and peak memory. All numbers are ratios against baselines measured in the same run on the same store.

    uv run python bench/trace_extract.py --sizes 10000 100000 1000000

Stores are built once under bench/data/ (git-ignored): MLflow's own migrations create the schema, MLflow's
tracing API writes ~100 template traces (8 spans each, tags, 20 % with human feedback), and SQL copies them
with new ids and spread timestamps up to the wanted size. Results go to bench/results/<size>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

TEMPLATES = 100
ALL_TOOLS = ("web.fetch", "sql.query", "calculator", "weather.lookup")  # root+kb+plan+4 tools+respond = 8 spans
DAY_MS = 86_400_000
# Each table MLflow keeps per trace, and its column holding the trace id.
ID_TABLES = {
    "trace_info": "request_id",
    "spans": "trace_id",
    "trace_tags": "request_id",
    "trace_request_metadata": "request_id",
    "assessments": "trace_id",
}


def build_template(path: Path) -> None:
    """~100 traces written by MLflow itself."""
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    import mlflow
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    from resources.agent.backends import OfflineBackend
    from resources.agent.demo_agent import DemoAgent, question_pool, record_trace

    mlflow.set_tracking_uri(f"sqlite:///{path}")
    mlflow.set_experiment("bench")
    agent, rng, now_ns = DemoAgent(OfflineBackend()), random.Random(3), time.time_ns()
    for i in range(TEMPLATES):
        persona, question, _ = rng.choice(question_pool())
        run = agent.run(question, ALL_TOOLS, rng)
        trace_id = record_trace(
            run, start_ns=now_ns - int(rng.uniform(60, 14 * 86400) * 1e9),
            tags={"persona": persona, "channel": rng.choice(("slack", "web", "api")), "environment": "prod"},
            client_request_id=f"req-{rng.getrandbits(64):016x}",
        )
        if i % 5 == 0:  # 20 % with feedback
            mlflow.log_feedback(trace_id=trace_id, name="user_thumbs", value=rng.random() < 0.6, rationale="bench",
                                source=AssessmentSource(AssessmentSourceType.HUMAN, "bench-user"))


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_xinfo({table})") if r[6] == 0]  # skip generated columns


def add_copies(path: Path, first: int, last: int, *, age_ms: int) -> None:
    """Copy the template traces `last - first` times, copy k getting ids suffixed with k."""
    from tqdm import tqdm

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    # Templates keep MLflow's own ids ('tr-' + 32 hex = 35 characters); copies carry a 7-digit suffix.
    db.execute("CREATE TEMP TABLE template_ids AS SELECT request_id FROM trace_info WHERE length(request_id) = 35")
    expressions = {
        "request_id": "t.request_id || printf('%07d', k)",
        "trace_id": "t.trace_id || printf('%07d', k)",
        "assessment_id": "t.assessment_id || printf('%07d', k)",
        "client_request_id": "t.client_request_id || printf('%07d', k)",
        "timestamp_ms": f"t.timestamp_ms - (k * 7919 % {age_ms})",
        "trace_timestamp_ms": f"t.trace_timestamp_ms - (k * 7919 % {age_ms})",
    }
    step = 500
    with tqdm(total=last - first, desc=f"copies -> {path.name}", unit="copy") as bar:
        for start in range(first, last, step):
            end = min(start + step, last)
            db.execute("DROP TABLE IF EXISTS temp.ks")
            db.execute(
                "CREATE TEMP TABLE ks AS WITH RECURSIVE s(k) AS (SELECT ? UNION ALL SELECT k + 1 FROM s WHERE k < ?) "
                "SELECT k FROM s",
                [start, end - 1],
            )
            for table, key in ID_TABLES.items():
                cols = _columns(db, table)
                select = ", ".join(expressions.get(c, f"t.{c}") for c in cols)
                db.execute(
                    f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM {table} t "
                    f"JOIN template_ids ON template_ids.request_id = t.{key} CROSS JOIN temp.ks"
                )
            db.commit()
            bar.update(end - start)
    db.close()


def ensure_store(size: int, data_dir: Path) -> Path:
    path = data_dir / f"mlflow-{size}.db"
    if path.exists():
        return path
    template = data_dir / "template.db"
    if not template.exists():
        build_template(template)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(template, tmp)
    add_copies(tmp, 1, size // TEMPLATES, age_ms=14 * DAY_MS)
    tmp.rename(path)
    return path


def bare_scans(uri: str) -> tuple[float, float]:
    """Read the extract's source columns from every table with no processing, two ways: streamed out of
    DuckDB as Arrow batches, and inside DuckDB's engine (count(column) of every column: the scanner must
    produce every value, and nothing is done with it)."""
    import duckdb

    from resources.trace_sources import RAW_COLUMNS, SqlTrackingStore

    con = duckdb.connect(config={"preserve_insertion_order": False})  # as the extract: it does not order rows
    SqlTrackingStore(uri).attach(con)
    started = time.perf_counter()
    for table, columns in RAW_COLUMNS.items():
        for _ in con.execute(f"SELECT {', '.join(columns)} FROM src.{table}").to_arrow_reader(100_000):
            pass
    arrow_s = time.perf_counter() - started
    started = time.perf_counter()
    for table, columns in RAW_COLUMNS.items():
        con.execute(f"SELECT {', '.join(f'count({c})' for c in columns)} FROM src.{table}").fetchall()
    return arrow_s, time.perf_counter() - started


def timed_extract(uri: str, warehouse: Path, *, full_refresh: bool = False) -> dict:
    """Run the extract in a child process so its peak RSS is its own."""
    code = (
        "import json, resource, sys, time\n"
        "import alembic.script, mlflow.store.db.utils  # imported by the schema check: not extract work\n"
        "from assets.traces.extract import extract_traces\n"
        "from resources.trace_sources import SqlTrackingStore\n"
        "t = time.perf_counter()\n"
        "r = extract_traces(SqlTrackingStore(sys.argv[1]), sys.argv[2], full_refresh=sys.argv[3] == '1')\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'mode': r.mode, 'changed': r.changed_traces,"
        " 'rows': r.rows, 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, uri, str(warehouse), "1" if full_refresh else "0"],
        cwd=BENCH_DIR.parent, capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def search_traces_rate(uri: str, limit: int) -> tuple[int, float]:
    """Page through up to `limit` traces (with spans) with MlflowClient.search_traces, upper time bound pinned."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("bench").experiment_id
    bound = int(time.time() * 1000)
    started, seen, token = time.perf_counter(), 0, None
    while seen < limit:
        page = client.search_traces(locations=[experiment_id], filter_string=f"trace.timestamp_ms <= {bound}",
                                    max_results=min(500, limit - seen), page_token=token)
        seen += len(page)
        token = page.token
        if not token:
            break
    return seen, time.perf_counter() - started


def run(size: int, data_dir: Path, search_limit: int) -> dict:
    store = ensure_store(size, data_dir)
    work = data_dir / f"work-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    live = work / "mlflow.db"
    shutil.copyfile(store, live)
    uri = f"sqlite:///{live}"
    print(f"[{size}] bare scans", flush=True)
    scan_s, engine_scan_s = bare_scans(uri)
    print(f"[{size}] full extract", flush=True)
    full = timed_extract(uri, work / "warehouse.duckdb")
    print(f"[{size}] search_traces over {min(size, search_limit)} traces", flush=True)
    searched, search_s = search_traces_rate(uri, search_limit)
    print(f"[{size}] +1 % new traces, incremental extract", flush=True)
    copies = size // TEMPLATES
    add_copies(live, copies, copies + max(1, copies // 100), age_ms=DAY_MS)
    incremental = timed_extract(uri, work / "warehouse.duckdb")
    extract_per_trace = full["seconds"] / size
    search_per_trace = search_s / searched
    result = {
        "traces": size,
        "spans": full["rows"]["spans"],
        "bare_scan_arrow_s": round(scan_s, 3),
        "bare_scan_in_engine_s": round(engine_scan_s, 3),
        "full_extract_s": round(full["seconds"], 3),
        "full_vs_bare_scan_arrow": round(full["seconds"] / scan_s, 2),
        "full_vs_bare_scan_in_engine": round(full["seconds"] / engine_scan_s, 2),
        "search_traces_traces": searched,
        "search_traces_s": round(search_s, 3),
        "extract_speedup_vs_search_traces": round(search_per_trace / extract_per_trace, 1),
        "incremental_new_traces": incremental["changed"],
        "incremental_s": round(incremental["seconds"], 3),
        "incremental_vs_full": round(incremental["seconds"] / full["seconds"], 4),
        "full_extract_peak_rss_mib": round(full["peak_rss_mib"], 1),
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="store sizes in traces")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data", help="where stores are built and kept")
    parser.add_argument("--search-limit", type=int, default=10_000,
                        help="search_traces pages through at most this many traces (its rate is per trace)")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    for size in args.sizes:
        if size < TEMPLATES or size % TEMPLATES:
            parser.error(f"--sizes must be multiples of {TEMPLATES}, not {size}")
        result = run(size, args.data_dir, args.search_limit)
        (BENCH_DIR / "results" / f"{size}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
