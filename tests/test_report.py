"""The HTML insights report: its charts (tokens and cost, experiment names, evaluations apart, day axes), its
link in Dagster's metadata, and `GET /report` on a real `llmops serve`, drawn by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest
import sqlalchemy as sa
from mlflow.genai.scorers.online.constants import EXCLUDE_EVAL_RUN_TRACES_FILTER

from assets.insights.assets import insights_report
from assets.insights.outcomes import OutcomeRules
from assets.insights.report import BAR_WIDTH_MS, DAY_MS, render_report, report_sections
from assets.insights.rollups import write_rollups, write_root_causes
from assets.traces.extract import extract_traces
from resources import settings
from resources.trace_sources import SqlTrackingStore
from resources.warehouse import WarehouseResource, sqlalchemy_engine
from tests.conftest import Store, http, llmops_serve
# the demo warehouse materialized through the insights assets, and the store with evaluation runs
from tests.test_insights_assets import materialized  # noqa: F401
from tests.test_outcomes import Built, built  # noqa: F401

CHROMIUM = shutil.which("chromium")
ONE_DAY = datetime(2025, 3, 4, tzinfo=timezone.utc)  # every trace of the `one_day` warehouse is on this UTC day


def _figure(section, title: str):
    return next(f for f in section.figures if f.layout.title.text == title)


def _with_rollups(source: str, folder: Path) -> str:
    """A copy of the warehouse `source` with the rollups and root causes the insights assets write."""
    copy = str(folder / "warehouse.duckdb")
    shutil.copyfile(source, copy)
    with sqlalchemy_engine(copy, read_only=False).begin() as conn:
        write_rollups(conn)
        write_root_causes(conn, OutcomeRules(min_support=1))
    return copy


@pytest.fixture(scope="module")
def evaluated(built: Built, tmp_path_factory) -> str:  # noqa: F811
    return _with_rollups(built.warehouse, tmp_path_factory.mktemp("evaluated"))


@pytest.fixture(scope="module")
def one_day(empty_store_file: Path, tmp_path_factory) -> str:
    """A warehouse whose traces (three OK, one ERROR) all started on ONE_DAY."""
    folder = tmp_path_factory.mktemp("one_day")
    uri = f"sqlite:///{shutil.copyfile(empty_store_file, folder / 'mlflow.db')}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("one-day", artifact_location=(folder / "art").as_uri())
    for hour in (9, 11, 15, 20):
        start = int(ONE_DAY.timestamp() + hour * 3600) * 10**9
        span = mlflow.start_span_no_context("chat", experiment_id=experiment, start_time_ns=start)
        span.end(status="ERROR" if hour == 20 else "OK", end_time_ns=start + 2 * 10**9)
    path = str(folder / "source.duckdb")
    extract_traces(SqlTrackingStore(uri), path)
    return _with_rollups(path, folder)


def test_tokens_and_cost_per_day_equal_the_daily_rollup(materialized, seeded_store: Store):  # noqa: F811
    path, _, _ = materialized
    with sqlalchemy_engine(path).connect() as conn:
        (section,), _ = report_sections(conn)
        daily = conn.execute(sa.text(
            "SELECT time_bucket, input_tokens, output_tokens, total_cost FROM insights_traffic_daily "
            "WHERE experiment_id = :e ORDER BY time_bucket"), {"e": seeded_store.experiment_id}).all()
    tokens = _figure(section, "Tokens and cost per day")
    series = {trace.name: trace for trace in tokens.data}
    assert set(series) == {"input tokens", "output tokens", "total cost (USD)"} and tokens.layout.showlegend
    days = [pd.Timestamp(day, unit="ms") for day, *_ in daily]
    assert all(list(series[name].x) == days for name in series)
    assert list(series["input tokens"].y) == [row.input_tokens for row in daily]
    assert list(series["output tokens"].y) == [row.output_tokens for row in daily]
    assert list(series["total cost (USD)"].y) == pytest.approx([row.total_cost for row in daily])
    assert sum(row.input_tokens for row in daily) > 0 and sum(row.total_cost for row in daily) > 0
    assert series["total cost (USD)"].yaxis == "y2"  # dollars on their own axis, not on the token scale


def test_sections_are_titled_by_experiment_name_and_by_id_without_one(materialized, seeded_store: Store,  # noqa: F811
                                                                       tmp_path: Path):
    path, _, _ = materialized
    with sqlalchemy_engine(path).connect() as conn:
        report = render_report(conn, tmp_path / "named.html")
    assert "<h2>llmops-demo: 60 production traces</h2>" in report.path.read_text()
    nameless = str(tmp_path / "nameless.duckdb")
    shutil.copyfile(path, nameless)
    with sqlalchemy_engine(nameless, read_only=False).begin() as conn:
        conn.execute(sa.text("DELETE FROM experiments"))  # as a warehouse not extracted since schema version 7
        (section,), _ = report_sections(conn)
    assert section.title == f"Experiment {seeded_store.experiment_id}: 60 production traces"


def test_evaluation_traces_have_their_own_section_never_the_production_charts(evaluated: str, built: Built,  # noqa: F811
                                                                               tmp_path: Path):
    production_traces = len(built.search(EXCLUDE_EVAL_RUN_TRACES_FILTER))
    with sqlalchemy_engine(evaluated).connect() as conn:
        default = render_report(conn, tmp_path / "default.html")
        both = render_report(conn, tmp_path / "both.html", include_evaluations=True)
        production, evaluations = report_sections(conn, include_evaluations=True)
    assert (default.experiments, default.evaluations) == ([built.production], [])
    assert "Evaluations" not in default.path.read_text()
    assert (both.experiments, both.evaluations) == ([built.production], sorted([built.production,
                                                                                 built.evaluations_only]))
    assert [s.title for s in production] == [f"production: {production_traces} production traces"] == [
        "production: 16 production traces"]
    # each mlflow.genai.evaluate run made three traces, one failed
    assert sorted(s.title for s in evaluations) == ["evaluations: 3 evaluation traces", "production: 3 evaluation traces"]
    volume = _figure(production[0], "Traces per day by status")
    assert sum(sum(trace.y) for trace in volume.data) == production_traces
    for section in evaluations:
        counts = {trace.name: sum(trace.y) for trace in _figure(section, "Traces per day by status").data}
        assert counts == {"OK": 2, "ERROR": 1} and section.root_causes is None
    text = both.path.read_text()
    assert text.index("<h2>production: 16 production traces</h2>") < text.index("<h2>Evaluations</h2>") < text.index(
        "<h3>evaluations: 3 evaluation traces</h3>")


def test_a_single_day_draws_one_labelled_day_with_a_legend_or_a_titled_series(one_day: str):
    with sqlalchemy_engine(one_day).connect() as conn:
        (section,), _ = report_sections(conn)
    day = pd.Timestamp(ONE_DAY.date())
    assert section.title == "one-day: 4 production traces"
    for figure in section.figures:
        if figure.layout.xaxis.type == "date":
            axis = figure.layout.xaxis
            assert (axis.dtick, axis.tickformat) == (DAY_MS, "%Y-%m-%d")  # day ticks, never hours or milliseconds
            assert [pd.Timestamp(end) for end in axis.range] == [day - pd.Timedelta(hours=12),
                                                                  day + pd.Timedelta(hours=12)]
            assert all(list(trace.x) == [day] for trace in figure.data)
            # a bar a day wide, or a marker: a single point still shows
            assert all(trace.width == BAR_WIDTH_MS if trace.type == "bar" else "markers" in trace.mode
                       for trace in figure.data)
        named = [trace.name for trace in figure.data]
        assert figure.layout.showlegend if len(named) > 1 else figure.layout.title.text, figure.layout.title.text
    assert [f.layout.title.text for f in section.figures if f.layout.xaxis.type == "date"] == [
        "Traces per day by status", "Latency percentiles per day (ms)",
        "Error rate per day (share of traces with status ERROR)"]  # no tokens, tools or feedback recorded
    errors = _figure(section, "Error rate per day (share of traces with status ERROR)").data
    assert len(errors) == 1 and list(errors[0].y) == [0.25]


def _materialize_report(warehouse: str, folder: str | None = None,
                        raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    config = {"reports_dir": folder} if folder else {}
    with dg.instance_for_test() as instance:
        return dg.materialize([insights_report], resources={"warehouse": WarehouseResource(path=warehouse)},
                              instance=instance, run_config={"ops": {"insights_report": {"config": config}}},
                              raise_on_error=raise_on_error)


def test_the_metadata_links_the_served_report_only_with_a_public_url(one_day: str, tmp_path: Path, monkeypatch):
    reports = tmp_path / "reports"
    monkeypatch.setenv(settings.LLMOPS_REPORTS_DIR, str(reports))
    monkeypatch.delenv(settings.LLMOPS_PUBLIC_URL, raising=False)
    metadata = _materialize_report(one_day).asset_materializations_for_node("insights_report")[0].metadata
    assert "report" not in metadata and metadata["path"] == dg.MetadataValue.path(str(reports / "insights.html"))
    assert "file://" not in str(metadata)  # browsers refuse file:// links from the Dagster UI
    monkeypatch.setenv(settings.LLMOPS_PUBLIC_URL, "https://llmops.example.com/")
    metadata = _materialize_report(one_day).asset_materializations_for_node("insights_report")[0].metadata
    assert metadata["report"] == dg.MetadataValue.url("https://llmops.example.com/report")
    assert metadata["path"].value == str(reports / "insights.html")
    # written elsewhere than the folder `llmops serve` serves: that URL would show another report
    metadata = _materialize_report(one_day, str(tmp_path / "elsewhere")).asset_materializations_for_node(
        "insights_report")[0].metadata
    assert "report" not in metadata and metadata["path"].value == str(tmp_path / "elsewhere" / "insights.html")
    monkeypatch.setenv(settings.LLMOPS_PUBLIC_URL, "file:///srv")
    failed = _materialize_report(one_day, raise_on_error=False)
    assert "LLMOPS_PUBLIC_URL must be an http(s):// URL, not 'file:///srv'" in str(failed.all_events)


def test_llmops_serve_answers_the_report_with_its_token_and_404_before_it(one_day: str, tmp_path: Path):
    reports = tmp_path / "reports"
    reports.mkdir()  # the folder, but no report in it yet
    env = {"LLMOPS_HOME": str(tmp_path / "home"), "LLMOPS_DUCKDB_PATH": one_day,
           "LLMOPS_REPORTS_DIR": str(reports), "LLMOPS_API_TOKEN": "report-token"}
    bearer = {"Authorization": "Bearer report-token"}
    with llmops_serve(env) as url:
        status, headers, body = http(f"{url}/report", headers=bearer)
        assert status == 404 and headers["content-type"] == "application/json"
        assert b'"error_code":"RESOURCE_NOT_FOUND"' in body and b"run `llmops extract`" in body
        with sqlalchemy_engine(one_day).connect() as conn:
            report = render_report(conn, reports / "insights.html")
        status, headers, body = http(f"{url}/report", headers=bearer)
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert body == report.path.read_bytes() and body.count(b'class="plotly-graph-div"') == report.charts == 3
        status, headers, body = http(f"{url}/report")
        assert status == 401 and headers["www-authenticate"] == "Bearer" and b"UNAUTHENTICATED" in body


def test_the_served_report_draws_its_charts_in_headless_chromium(materialized, tmp_path: Path):  # noqa: F811
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed: apt-get install chromium")
    path, report, result = materialized
    charts = result.asset_materializations_for_node("insights_report")[0].metadata["charts"].value
    assert charts == 7  # volume, latency, error rate, tokens and cost, tools, feedback trend, root-cause heatmap
    env = {"LLMOPS_HOME": str(tmp_path / "home"), "LLMOPS_DUCKDB_PATH": path,
           "LLMOPS_REPORTS_DIR": str(report.parent)}
    with llmops_serve(env) as url:
        browser = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
             "--dump-dom", f"{url}/report"],
            capture_output=True, text=True, timeout=120,
        )
    dom = browser.stdout
    assert "Uncaught" not in browser.stderr, browser.stderr[-2000:]  # no script failed
    # Plotly replaces each chart's empty div with a drawn plot: an SVG with axes and traces inside.
    assert dom.count('class="plot-container plotly"') == charts, dom[:500]
    assert dom.count('class="main-svg"') >= charts
    bars = re.findall(r'<g class="point"><path d="M[^"]+"', dom)
    assert len(bars) > 10  # volume bars (OK and ERROR per day), token bars and tool bars have real geometry
    assert dom.count('class="hm"') == 1 or "heatmaplayer" in dom  # the root-cause heatmap layer
    assert dom.count('class="legend"') == 5  # volume, latency, tokens and cost, tools, feedback: several series each
    assert "Tokens and cost per day" in dom and "total cost (USD)" in dom
    ticks = re.findall(r'class="xtick"><text[^>]*>([^<]+)<', dom)
    assert ticks and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", t) for t in ticks if t[:2] == "20")  # day labels
    assert "<h2>llmops-demo: 60 production traces</h2>" in dom
    assert "Top root causes" in dom and "status is ERROR (" in dom and "tool sql.query failed" in dom
