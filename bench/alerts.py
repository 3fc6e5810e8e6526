"""Benchmark of the alert evaluation on bench/insights.py's warehouses: judging rules (with a 7-day baseline) and
opening incidents with their window's root causes, as ratios against a bare scan of the window and against the
`root_causes` asset's whole ranking, measured in the same run.

    uv run python bench/alerts.py --sizes 100000 1000000

Every measurement runs in a transaction that is rolled back, so the warehouse is left as it was. Results go to
bench/results/alerts-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.insights import ensure_warehouse  # noqa: E402

# Three of the four fire, so three incidents open with their root causes (the synthetic traffic has no thumbs-down).
RULES = """\
rules:
  - {name: errors, metric: error_rate, window: 1d, above: 0.0}
  - {name: slower, metric: latency_p95_ms, window: 1h, above_baseline: 0.1, min_count: 1}
  - {name: budget, metric: cost_usd, window: 1d, above: 1000000000.0}
  - {name: thumbs-up, metric: feedback_rate, feedback: user_thumbs, value: true, window: 1d, above: 0.0}
"""


def best_of(runs: int, action) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(runs):
        started = time.perf_counter()
        answer = action()
        times.append(time.perf_counter() - started)
    return min(times), answer


def rolled_back(engine, action):
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            return action(conn)
        finally:
            transaction.rollback()


def run(size: int, data_dir: Path, repeats: int) -> dict:
    import sqlalchemy as sa

    from assets.alerts.evaluation import FIRING, evaluate
    from assets.alerts.incidents import record
    from assets.alerts.rules import load_rules
    from assets.insights.outcomes import load_outcomes
    from assets.insights.rollups import write_root_causes
    from resources.warehouse import WarehouseResource, sqlalchemy_engine

    _, path = ensure_warehouse(size, data_dir)
    with WarehouseResource(path=str(path)).migrated():
        pass  # the alert tables
    with tempfile.TemporaryDirectory() as folder:
        rules_file = Path(folder) / "rules.yaml"
        rules_file.write_text(RULES)
        rules = load_rules(rules_file)
    engine = sqlalchemy_engine(str(path), read_only=False)
    with engine.connect() as conn:
        now = conn.execute(sa.text("SELECT max(timestamp_ms) + 1 FROM traces")).scalar()
        experiments = conn.execute(sa.text("SELECT count(DISTINCT experiment_id) FROM traces")).scalar()

    def bare(conn):  # the least any rule does: count the window's traces of each experiment
        return conn.execute(sa.text("SELECT experiment_id, count(*) FROM traces WHERE timestamp_ms >= :start "
                                    "GROUP BY 1"), {"start": now - 86_400_000}).all()

    bare_s, _ = best_of(repeats, lambda: rolled_back(engine, bare))
    judge_s, (evaluations, _) = best_of(repeats, lambda: rolled_back(
        engine, lambda conn: evaluate(conn, rules.rules, now, "traces")))
    open_s, changes = best_of(repeats, lambda: rolled_back(
        engine, lambda conn: record(conn, evaluate(conn, rules.rules, now, "traces")[0], rules, now, "traces")))
    outcomes = load_outcomes()
    ranking_s, _ = best_of(max(1, repeats // 2), lambda: rolled_back(
        engine, lambda conn: write_root_causes(conn, outcomes)))
    engine.dispose()
    return {
        "size": size, "experiments": experiments, "rule_checks": len(evaluations),
        "firing": sum(e.state == FIRING for e in evaluations), "incidents_opened": len(changes.opened),
        "bare_window_scan_s": round(bare_s, 4), "judge_rules_s": round(judge_s, 4),
        "judge_and_open_incidents_s": round(open_s, 4), "root_causes_asset_s": round(ranking_s, 4),
        "judge_vs_bare_scan": round(judge_s / bare_s, 1),
        "open_vs_root_causes_asset": round(open_s / ranking_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        result = run(size, args.data_dir, args.repeats)
        (BENCH_DIR / "results" / f"alerts-{size}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
