"""Benchmark of the MLflow-compatible trace metrics: the requests MLflow's Overview dashboard makes, answered by
`POST /api/3.0/mlflow/traces/metrics` over real HTTP (MLflow's own `RestStore` against `llmops serve`), by the
Python API (`WarehouseTraceStore.query_trace_metrics`) and by MLflow's `SqlAlchemyStore.query_trace_metrics` on
the same SQLite store, with the answers checked equal, as ratios measured in the same run.

    uv run python bench/trace_metrics.py --sizes 100000 1000000          # ~5 min at 100k, ~25 min at 1M
    uv run python bench/trace_metrics.py --table bench/results/trace-metrics-1000000.json   # README table

Stores are bench/trace_extract.py's (built if missing: ~15.7 GB and ~10 min for 1M); each is extracted into
bench/data/warehouse-<size>.duckdb by bench/insights.py's `ensure_warehouse`, which brings a kept one up to date with
an incremental extract (a warehouse left by an older schema is migrated); then the rollups are written, as the
insights_rollups asset does after each extract. Per request: p50 and p95 of `--repeats`
calls after one warm-up, over HTTP and through the Python API; MLflow's best of 3 (its first run of a query may
read the SQLite file from disk). Results go to bench/results/trace-metrics-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.insights import best_of, ensure_warehouse, serving, timed  # noqa: E402

DAY_S = 86_400
PERCENTILES = (50.0, 90.0, 95.0, 99.0)
TARGET_P95_MS = 50.0
TARGET_SPEEDUP = 20.0


def overview_requests(low: int, high: int) -> dict[str, dict]:
    """query_trace_metrics keyword arguments of the requests MLflow's Overview dashboard makes, over [low, high]."""
    from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricViewType

    count, total, avg = (MetricAggregation(t) for t in (AggregationType.COUNT, AggregationType.SUM,
                                                         AggregationType.AVG))
    percentiles = [MetricAggregation(AggregationType.PERCENTILE, p) for p in PERCENTILES]
    whole = {"start_time_ms": low, "end_time_ms": high}
    daily = {**whole, "time_interval_seconds": DAY_S}
    traces, spans, assessments = MetricViewType.TRACES, MetricViewType.SPANS, MetricViewType.ASSESSMENTS
    return {
        "daily trace count by status": dict(view_type=traces, metric_name="trace_count", aggregations=[count],
                                            dimensions=["trace_status"], **daily),
        "daily trace latency P50/P90/P95/P99": dict(view_type=traces, metric_name="latency",
                                                    aggregations=percentiles, **daily),
        "daily total tokens (sum)": dict(view_type=traces, metric_name="total_tokens", aggregations=[total], **daily),
        "span latency P50/P90/P95/P99 by span_name": dict(view_type=spans, metric_name="latency",
                                                          aggregations=percentiles, dimensions=["span_name"], **whole),
        "span total_cost (sum) by span_model_name": dict(view_type=spans, metric_name="total_cost",
                                                         aggregations=[total], dimensions=["span_model_name"], **whole),
        "daily assessment_value (avg) by assessment_name": dict(
            view_type=assessments, metric_name="assessment_value", aggregations=[avg],
            dimensions=["assessment_name"], **daily),
        "assessment_count by assessment_name, assessment_value": dict(
            view_type=assessments, metric_name="assessment_count", aggregations=[count],
            dimensions=["assessment_name", "assessment_value"], **whole),
        "daily trace count by status, trace.tag.persona = 'sme'": dict(
            view_type=traces, metric_name="trace_count", aggregations=[count], dimensions=["trace_status"],
            filters=["trace.tag.persona = 'sme'"], **daily),
        "daily span_count by span_name, span.type = 'TOOL'": dict(
            view_type=spans, metric_name="span_count", aggregations=[count], dimensions=["span_name"],
            filters=["span.type = 'TOOL'"], **daily),
    }


def describe(kwargs: dict) -> dict:
    """A request as JSON (for the results file)."""
    return {k: (v.value if hasattr(v, "value") else [str(a) for a in v] if k == "aggregations" else v)
            for k, v in kwargs.items()}


def points(answer) -> list[tuple]:
    """Data points comparably: MLflow's REST protocol carries values as doubles."""
    return [(p.metric_name, p.dimensions, {k: float(v) for k, v in p.values.items()}) for p in answer]


def assert_same(ours, mlflow_answer, label: str) -> None:
    """Same data points in the same order; values equal to 1e-9 relative."""
    ours, theirs = points(ours), points(mlflow_answer)
    assert len(ours) == len(theirs), f"{label}: {len(ours)} points, MLflow {len(theirs)}"
    for (name, dims, values), (m_name, m_dims, m_values) in zip(ours, theirs):
        assert (name, dims, values.keys()) == (m_name, m_dims, m_values.keys()), (label, dims, m_dims)
        assert all(math.isclose(values[k], m_values[k], rel_tol=1e-9, abs_tol=1e-12) for k in values), \
            (label, dims, values, m_values)


def write_rollups(warehouse: Path) -> float:
    """Bring the rollups up to date, as the insights_rollups asset does after each extract (the span view's
    counts and costs are summed from them); seconds taken."""
    from assets.insights import rollups
    from resources.warehouse import sqlalchemy_engine

    engine = sqlalchemy_engine(str(warehouse), read_only=False)
    with engine.begin() as conn:
        _, seconds = timed(lambda: rollups.write_rollups(conn))
    engine.dispose()
    print(f"rollups written in {seconds:.2f} s", flush=True)
    return seconds


def p50_p95(action, repeats: int) -> tuple[object, float, float]:
    """The answer of a warm-up call, then p50 and p95 in ms of `repeats` timed calls."""
    answer = action()
    times = sorted(timed(action)[1] * 1000 for _ in range(repeats))
    p50 = (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2
    return answer, p50, times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def run(size: int, data_dir: Path, repeats: int) -> dict:
    import duckdb
    import mlflow
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    from assets.insights.trace_metrics import WarehouseTraceStore

    uri, warehouse = ensure_warehouse(size, data_dir)
    rollups_s = write_rollups(warehouse)
    load_before = os.getloadavg()  # the machine is shared: how busy it was, for reading the numbers
    with duckdb.connect(str(warehouse), read_only=True) as con:
        experiment_id, traces, low, high = con.execute(
            "SELECT min(experiment_id), count(*), min(timestamp_ms), max(timestamp_ms) FROM traces").fetchone()
        spans = con.execute("SELECT count(*) FROM spans").fetchone()[0]
    requests = overview_requests(low, high)
    ours, mlflow_store = WarehouseTraceStore(str(warehouse)), SqlAlchemyStore(uri, str(data_dir / "artifacts"))
    results: dict[str, dict] = {}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # a server error fails the run, it is not retried
    with serving(warehouse) as url:
        rest = RestStore(lambda: MlflowHostCreds(url))
        for label, kwargs in requests.items():
            over_http, http_p50, http_p95 = p50_p95(lambda: rest.query_trace_metrics([experiment_id], **kwargs),
                                                    repeats)
            python_api, api_p50, api_p95 = p50_p95(lambda: ours.query_trace_metrics([experiment_id], **kwargs),
                                                   repeats)
            results[label] = {"request": describe(kwargs), "http_p50_ms": round(http_p50, 1),
                              "http_p95_ms": round(http_p95, 1), "python_p50_ms": round(api_p50, 1),
                              "python_p95_ms": round(api_p95, 1), "points": len(over_http)}
            results[label]["_answers"] = (over_http, python_api)
            print(f"[{size}] {label}: HTTP p50 {http_p50:.1f} / p95 {http_p95:.1f} ms, Python API p50 "
                  f"{api_p50:.1f} ms, {len(over_http)} points", flush=True)
    for label, kwargs in requests.items():  # the server is stopped: MLflow has the cores to itself
        expected, mlflow_s = best_of(3, lambda: mlflow_store.query_trace_metrics([experiment_id], **kwargs))
        over_http, python_api = results[label].pop("_answers")
        assert expected, f"{label}: MLflow answers no data points"
        assert_same(over_http, expected, label)
        assert_same(python_api, expected, label)
        entry = results[label]
        entry["mlflow_ms"] = round(mlflow_s * 1000, 1)
        entry["speedup_http_p50"] = round(mlflow_s * 1000 / entry["http_p50_ms"], 1)
        entry["speedup_http_p95"] = round(mlflow_s * 1000 / entry["http_p95_ms"], 1)
        entry["speedup_python_p50"] = round(mlflow_s * 1000 / entry["python_p50_ms"], 1)
        print(f"[{size}] {label}: MLflow {mlflow_s * 1000:.0f} ms = {entry['speedup_http_p50']}x the endpoint's "
              "p50, answers equal", flush=True)
    return {
        "traces": traces, "spans": spans, "repeats": repeats, "rollups_s": round(rollups_s, 2), "requests": results,
        "max_http_p95_ms": max(r["http_p95_ms"] for r in results.values()),
        "min_speedup_http_p50": min(r["speedup_http_p50"] for r in results.values()),
        "targets": {"http_p95_ms_at_most": TARGET_P95_MS, "speedup_at_least": TARGET_SPEEDUP},
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": f"{os.cpu_count()} cores", "duckdb": duckdb.__version__, "mlflow": mlflow.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def table(result: dict) -> str:
    """The README's table of one results file."""
    lines = ["| request | points | ours over HTTP p50 / p95 | Python API p50 | MLflow `SqlAlchemyStore` | "
             "MLflow ÷ ours (HTTP p50) | MLflow ÷ ours (HTTP p95) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in result["requests"].items():
        p95 = f"**{r['http_p95_ms']}**" if r["http_p95_ms"] > TARGET_P95_MS else f"{r['http_p95_ms']}"
        lines.append(f"| {label} | {r['points']} | {r['http_p50_ms']} / {p95} ms | {r['python_p50_ms']} ms | "
                     f"{r['mlflow_ms']:,.0f} ms | {r['speedup_http_p50']}× | {r['speedup_http_p95']}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="store sizes in traces")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data", help="where stores are built and kept")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per request, over HTTP and in Python")
    parser.add_argument("--table", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="print the README table of these results files and exit")
    args = parser.parse_args()
    if args.table:
        for path in args.table:
            print(table(json.loads(path.read_text())) + "\n")
        return
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    for size in args.sizes:
        result = run(size, args.data_dir, args.repeats)
        (BENCH_DIR / "results" / f"trace-metrics-{size}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2), flush=True)
        print(table(result), flush=True)


if __name__ == "__main__":
    main()
