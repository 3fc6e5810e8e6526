"""Benchmark of the insights: every REST endpoint's latency over real HTTP, the root_causes computation, and
MLflow answering the same questions on the same store (query_trace_metrics; calculate_trace_filter_correlation
per pair), as ratios measured in the same run, with the answers checked equal.

    uv run python bench/insights.py --sizes 100000 1000000

Stores are bench/trace_extract.py's (built if missing); each is extracted once into
bench/data/warehouse-<size>.duckdb, and a kept warehouse is brought up to date (and its schema migrated) by an
incremental extract before the run. Results go to bench/results/insights-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.trace_extract import ensure_store  # noqa: E402

PREFIX = "/api/3.0/mlflow/traces/insights"
TARGETS = {  # the outcomes ranked against every dimension, with MLflow's filter for the same traces
    "status = ERROR": ({"name": "status", "parameters": {"value": "ERROR"}}, "attributes.status = 'ERROR'"),
    "user_thumbs = false": ({"name": "assessment.user_thumbs", "parameters": {"value": False}},
                            "feedback.user_thumbs = 'false'"),
}


def ensure_warehouse(size: int, data_dir: Path) -> tuple[str, Path]:
    from assets.traces.extract import extract_traces
    from resources.trace_sources import SqlTrackingStore

    uri = f"sqlite:///{ensure_store(size, data_dir)}"
    path = data_dir / f"warehouse-{size}.duckdb"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        extract_traces(SqlTrackingStore(uri), str(tmp))
        tmp.rename(path)
    else:  # up to date with the store and the schema (a no-op when it is; migrates one an older version wrote)
        extract_traces(SqlTrackingStore(uri), str(path))
    return uri, path


def endpoint_bodies(experiment_id: str, last_ms: int) -> dict[str, dict]:
    """Each endpoint's body over the whole experiment; correlations and discovery also over the last 7 days to the
    millisecond (not whole hours: their parts of hours are read from the facts, not the hourly counts)."""
    base = {"experiment_ids": [experiment_id], "time_bucket": "day"}
    week = {**base, "start_time": last_ms - 7 * 86_400_000 + 1, "end_time": last_ms}
    return {
        "traffic-cost/volume": base,
        "traffic-cost/latency": base,
        "traffic-cost/errors": base,
        "traffic-cost/tokens": base,
        "assessments/discovery": base,
        "assessments/metrics": {**base, "assessment_name": "user_thumbs"},
        "tools/discovery": base,
        "tools/metrics": {**base, "tool_name": "web.fetch"},
        "tags/discovery": base,
        "tags/metrics": {**base, "tag_key": "persona"},
        "dimensions/discovery": base,
        "dimensions/calculate-npmi": {**base, "dimension1": TARGETS["user_thumbs = false"][0],
                                      "dimension2": {"name": "tools.web.fetch", "parameters": {"value": "error"}}},
        "correlations": {**base, "dimension": TARGETS["user_thumbs = false"][0], "limit": 10, "min_support": 5},
        "dimensions/discovery [7 days]": week,
        "correlations [7 days]": {**week, "dimension": TARGETS["user_thumbs = false"][0], "limit": 10,
                                  "min_support": 5},
    }


@contextmanager
def serving(warehouse: Path) -> Iterator[str]:
    """`llmops serve` over the warehouse on a free 127.0.0.1 port, in its own process; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLMOPS_DUCKDB_PATH": str(warehouse), "LLMOPS_HOME": str(warehouse.parent / "home")}
    server = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port)],
                              cwd=BENCH_DIR.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError("llmops serve did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def endpoint_latencies(warehouse: Path, experiment_id: str, last_ms: int, repeats: int) -> dict[str, dict]:
    """p50/p95 of each endpoint over real HTTP against `llmops serve` (per request: open, query, close)."""
    with serving(warehouse) as url:
        results, bodies = {}, endpoint_bodies(experiment_id, last_ms)
        for path, body in tqdm(bodies.items(), total=len(bodies), desc="endpoints", unit="endpoint"):
            route = path.split(" ")[0]
            request = urllib.request.Request(f"{url}{PREFIX}/{route}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            times = []
            for i in range(repeats + 3):
                started = time.perf_counter()
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
                if i >= 3:  # the first requests warm the OS file cache
                    times.append((time.perf_counter() - started) * 1000)
            times.sort()
            results[path] = {"p50_ms": round(statistics.median(times), 1),
                             "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1)}
            tqdm.write(f"  {path}: {results[path]}")
        return results


def timed(action, *args, **kwargs):
    started = time.perf_counter()
    value = action(*args, **kwargs)
    return value, time.perf_counter() - started


def best_of(runs: int, action, *args):
    """The answer and the fastest of `runs` timings: the first run of a query over a 15 GB SQLite store
    may read it from disk, the next from the OS cache; each side gets its warm time."""
    results = [timed(action, *args) for _ in range(runs)]
    return results[0][0], min(seconds for _, seconds in results)


def traffic_vs_mlflow(conn, store, experiment_id: str) -> dict:
    """Daily volume by status and latency percentiles: ours vs query_trace_metrics, checked equal."""
    import sqlalchemy as sa
    from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

    from assets.insights.queries import InsightsQuery, traffic_latency, traffic_volume

    low, high = conn.execute(sa.text("SELECT min(timestamp_ms), max(timestamp_ms) FROM traces")).one()
    query = InsightsQuery(experiment_ids=[experiment_id], start_time=low, end_time=high)
    volume, ours_volume_s = best_of(5, traffic_volume, conn, query)
    points, mlflow_volume_s = best_of(3, lambda: store.query_trace_metrics(
        [experiment_id], MetricViewType.TRACES, "trace_count", [MetricAggregation(AggregationType.COUNT)],
        dimensions=["trace_status"], time_interval_seconds=86_400, start_time_ms=low, end_time_ms=high))
    theirs: dict[int, int] = {}
    for p in points:
        bucket = int(datetime.fromisoformat(p.dimensions["time_bucket"]).timestamp() * 1000)
        theirs[bucket] = theirs.get(bucket, 0) + p.values["COUNT"]
    assert theirs == {p.time_bucket: p.count for p in volume.time_series}, "volume differs from MLflow's"
    aggregations = [MetricAggregation(AggregationType.PERCENTILE, p) for p in (50.0, 90.0, 95.0, 99.0)]
    latency, ours_latency_s = best_of(5, traffic_latency, conn, query)
    points, mlflow_latency_s = best_of(3, lambda: store.query_trace_metrics(
        [experiment_id], MetricViewType.TRACES, "latency", aggregations, time_interval_seconds=86_400,
        start_time_ms=low, end_time_ms=high))
    theirs_p95 = {int(datetime.fromisoformat(p.dimensions["time_bucket"]).timestamp() * 1000): p.values["P95.0"]
                  for p in points}
    for point in latency.time_series:
        assert abs(point.p95_latency - theirs_p95[point.time_bucket]) < 1e-6, "latency differs from MLflow's"
    return {
        "volume_ours_s": round(ours_volume_s, 4), "volume_mlflow_s": round(mlflow_volume_s, 3),
        "volume_speedup": round(mlflow_volume_s / ours_volume_s, 1),
        "latency_ours_s": round(ours_latency_s, 4), "latency_mlflow_s": round(mlflow_latency_s, 3),
        "latency_speedup": round(mlflow_latency_s / ours_latency_s, 1),
    }


def correlations_vs_mlflow(conn, store, experiment_id: str, max_pairs: int) -> dict:
    """Rank every dimension against each target (ours: one call) vs calculate_trace_filter_correlation per pair;
    and one pair each way (ours: calculate_npmi)."""
    from assets.insights.dimensions import CorrelationsRequest, correlations
    from assets.insights.npmi import calculate_npmi, mlflow_filter_string

    results = {}
    for label, (target, target_filter) in TARGETS.items():
        request = CorrelationsRequest(experiment_ids=[experiment_id], dimension=target, limit=None, min_support=1)
        ranked, ours_s = timed(correlations, conn, request)
        comparable = [(c, mlflow_filter_string(c.dimension)) for c in ranked.data if mlflow_filter_string(c.dimension)]
        checked, mlflow_s, ours_pairs_s = 0, 0.0, 0.0
        for candidate, candidate_filter in comparable[:max_pairs]:
            ours_pairs_s += timed(calculate_npmi, conn, request, request.dimension, candidate.dimension)[1]
            theirs, seconds = timed(
                store.calculate_trace_filter_correlation, [experiment_id], target_filter, candidate_filter
            )
            mlflow_s += seconds
            print(f"    {label} ~ {candidate_filter}: MLflow {seconds:.1f} s", flush=True)
            assert (theirs.filter2_count, theirs.joint_count) == (candidate.count, candidate.intersection_count), label
            assert abs(theirs.npmi - candidate.correlation.npmi_score) < 1e-9, label
            checked += 1
        if not checked:  # --max-pairs 0: MLflow's per-pair time was measured on a smaller store
            results[label] = {"dimensions_ranked": len(ranked.data), "ours_all_s": round(ours_s, 3)}
            print(f"  {label}: {results[label]}", flush=True)
            continue
        per_pair = mlflow_s / checked
        results[label] = {
            "dimensions_ranked": len(ranked.data), "ours_all_s": round(ours_s, 3),
            "mlflow_pairs_checked": checked, "mlflow_per_pair_s": round(per_pair, 3),
            "mlflow_all_pairs_s_estimated": round(per_pair * len(ranked.data), 1),
            "speedup_all_dimensions": round(per_pair * len(ranked.data) / ours_s, 1),
            "ours_per_pair_s": round(ours_pairs_s / checked, 4),
            "speedup_per_pair": round(mlflow_s / ours_pairs_s, 1),
        }
        print(f"  {label}: {results[label]}", flush=True)
    return results


def run(size: int, data_dir: Path, repeats: int, max_pairs: int, rebuild_facts: bool) -> dict:
    import sqlalchemy as sa
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from assets.insights.facts import refresh_facts
    from assets.insights.rollups import OutcomeRules, write_rollups, write_root_causes
    from resources.warehouse import sqlalchemy_engine

    print(f"[{size}] warehouse", flush=True)
    uri, warehouse = ensure_warehouse(size, data_dir)
    engine = sqlalchemy_engine(str(warehouse), read_only=False)
    with engine.connect() as conn:
        experiment_id = conn.execute(sa.text("SELECT min(experiment_id) FROM traces")).scalar()
        traces, last_ms = conn.execute(sa.text("SELECT count(*), max(timestamp_ms) FROM traces")).one()
    print(f"[{size}] dimension facts{' (built anew)' if rebuild_facts else ''}", flush=True)
    with engine.begin() as conn:
        if rebuild_facts:
            for table in ("trace_dimension_values", "dimension_values", "dimension_value_hours",
                          "_dimension_facts_state"):
                conn.execute(sa.text(f"DELETE FROM {table}"))
    with engine.begin() as conn:
        facts, facts_s = timed(lambda: refresh_facts(conn))
    print(f"  {facts} in {facts_s:.2f} s", flush=True)
    print(f"[{size}] rollups and root causes", flush=True)
    with engine.begin() as conn:
        rollups, rollups_s = timed(lambda: write_rollups(conn))
    with engine.begin() as conn:
        causes, root_causes_s = timed(lambda: write_root_causes(conn, OutcomeRules()))
    engine.dispose()
    print(f"[{size}] endpoints over HTTP ({repeats} requests each)", flush=True)
    endpoints = endpoint_latencies(warehouse, experiment_id, last_ms, repeats)
    print(f"[{size}] MLflow on the same store", flush=True)
    store = SqlAlchemyStore(uri, str(data_dir / "artifacts"))
    with sqlalchemy_engine(str(warehouse)).connect() as conn:
        traffic = traffic_vs_mlflow(conn, store, experiment_id)
        print(f"  traffic: {traffic}", flush=True)
        correlation = correlations_vs_mlflow(conn, store, experiment_id, max_pairs)
    return {
        "traces": traces,
        "endpoints_ms": endpoints,
        "max_endpoint_p95_ms": max(e["p95_ms"] for e in endpoints.values()),
        "facts_refresh_s": round(facts_s, 2), "facts_built_anew": rebuild_facts,
        "facts_traces_added": facts.traces_added, "facts": facts.facts,
        "rollups_s": round(rollups_s, 2), "rollup_rows": rollups,
        "root_causes_s": round(root_causes_s, 2), "root_cause_rows": len(causes),
        "root_cause_outcomes": len({(r["outcome"], r["outcome_value"]) for r in causes}),
        "traffic_vs_mlflow": traffic, "correlations_vs_mlflow": correlation,
        "machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="store sizes in traces")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data", help="where stores are built and kept")
    parser.add_argument("--repeats", type=int, default=40, help="timed requests per endpoint")
    parser.add_argument("--max-pairs", type=int, default=8,
                        help="pairs asked of calculate_trace_filter_correlation per target (its time is per pair)")
    parser.add_argument("--rebuild-facts", action="store_true",
                        help="time building the dimension facts from nothing (default: bring them up to date)")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        result = run(size, args.data_dir, args.repeats, args.max_pairs, args.rebuild_facts)
        (BENCH_DIR / "results" / f"insights-{size}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
