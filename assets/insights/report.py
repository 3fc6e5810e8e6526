"""The insights report: one self-contained HTML page of Plotly charts, a section per experiment (no Dagster).

Drawn from the daily rollups and `root_causes` the insights assets write: volume, latency and error rate over
time, the tools with their error rates, the feedback trend, and a heatmap of what goes with each bad outcome, in
plain words. Experiments holding only evaluation traces are left out unless asked for. plotly.js is inlined once,
so the page opens offline and from a file.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import sqlalchemy as sa
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from assets.insights.queries import TRACES
from assets.insights.registry import EVALUATION_TRACES

HEATMAP_DIMENSIONS = 15  # columns of the root-cause heatmap: the dimensions with the highest NPMI anywhere


@dataclass
class Report:
    path: Path
    charts: int
    experiments: list[str]


def _frame(conn: sa.Connection, sql: str, experiment_id: str) -> pd.DataFrame:
    result = conn.execute(sa.text(sql), {"experiment_id": experiment_id})
    frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    if "time_bucket" in frame:
        frame["day"] = pd.to_datetime(frame["time_bucket"], unit="ms", utc=True)
    return frame


def _traffic_figures(traffic: pd.DataFrame) -> list[go.Figure]:
    volume = go.Figure([
        go.Bar(x=traffic["day"], y=traffic["ok_count"], name="OK", marker_color="#2ca02c"),
        go.Bar(x=traffic["day"], y=traffic["error_count"], name="ERROR", marker_color="#d62728"),
    ])
    volume.update_layout(barmode="stack", title="Traces per day", yaxis_title="traces")
    latency = go.Figure([
        go.Scatter(x=traffic["day"], y=traffic[f"p{p}_latency"], mode="lines+markers", name=f"p{p}")
        for p in (50, 95, 99)
    ])
    latency.update_layout(title="Latency per day (ms)", yaxis_title="ms")
    errors = go.Figure(go.Scatter(x=traffic["day"], y=traffic["error_count"] / traffic["count"], mode="lines+markers",
                                  name="error rate", line_color="#d62728"))
    errors.update_layout(title="Error rate per day", yaxis_tickformat=".0%")
    return [volume, latency, errors]


def _tools_figure(tools: pd.DataFrame) -> go.Figure:
    totals = tools.groupby("tool_name")[["calls", "error_count"]].sum().sort_values("calls", ascending=False)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Bar(x=totals.index, y=totals["calls"], name="calls", marker_color="#1f77b4"))
    figure.add_trace(go.Scatter(x=totals.index, y=totals["error_count"] / totals["calls"], name="error rate",
                                mode="markers", marker={"size": 14, "color": "#d62728"}), secondary_y=True)
    figure.update_layout(title="Tools: calls and error rate")
    figure.update_yaxes(title_text="error rate", tickformat=".0%", secondary_y=True)
    return figure


def _feedback_figure(assessments: pd.DataFrame) -> go.Figure | None:
    boolean = assessments[assessments["value"].isin(["true", "false"])]
    if boolean.empty:
        return None
    per_day = boolean.pivot_table(index=["name", "day"], columns="value", values="count", aggfunc="sum", fill_value=0)
    per_day = per_day.reindex(columns=["true", "false"], fill_value=0).reset_index()
    figure = go.Figure([
        go.Scatter(x=rows["day"], y=rows["true"] / (rows["true"] + rows["false"]), mode="lines+markers",
                   name=f"{name}: share true")
        for name, rows in per_day.groupby("name")
    ])
    figure.update_layout(title="Feedback trend (boolean feedback: share of true per day)", yaxis_tickformat=".0%")
    return figure


def _root_cause_figure(causes: pd.DataFrame) -> go.Figure | None:
    if causes.empty:
        return None
    top = causes.groupby("description")["npmi"].max().nlargest(HEATMAP_DIMENSIONS).index
    grid = causes[causes["description"].isin(top)].pivot_table(
        index="outcome_description", columns="description", values="npmi", aggfunc="max"
    ).reindex(columns=list(top))
    figure = go.Figure(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), zmin=-1, zmax=1,
                                  colorscale="RdBu_r", colorbar={"title": "NPMI"}, hoverongaps=False))
    figure.update_layout(title="What goes with bad outcomes (NPMI; blank: below minimum support or not above chance)",
                         xaxis_tickangle=-35, height=420 + 10 * len(grid.index))
    return figure


def _root_cause_table(causes: pd.DataFrame, per_outcome: int = 5) -> str:
    if causes.empty:
        return "<p>No dimension reaches the minimum support yet.</p>"
    top = causes[causes["rank"] <= per_outcome]
    rows = "".join(
        f"<tr><td>{html.escape(r.outcome_description)} ({r.outcome_count})</td>"
        f"<td>{html.escape(r.description)}</td><td>{r.npmi:.3f}</td>"
        f"<td>{html.escape(r.strength)} {html.escape(r.direction)}</td><td>{r.intersection_count} / {r.count}</td></tr>"
        for r in top.itertuples()
    )
    return ("<table><thead><tr><th>outcome (traces)</th><th>goes with</th><th>NPMI</th><th>strength</th>"
            f"<th>together / with the dimension</th></tr></thead><tbody>{rows}</tbody></table>")


def render_report(conn: sa.Connection, path: Path, include_evaluations: bool = False) -> Report:
    """Write the report for every experiment in the rollups to `path`; those holding only evaluation traces only
    with `include_evaluations`."""
    daily = sa.table("insights_traffic_daily", sa.column("experiment_id"))
    select = sa.select(daily.c.experiment_id).distinct().order_by(daily.c.experiment_id)
    if not include_evaluations:
        select = select.where(daily.c.experiment_id.in_(
            sa.select(TRACES.c.experiment_id).where(TRACES.c.trace_id.not_in(EVALUATION_TRACES))))
    experiments = list(conn.execute(select).scalars())
    sections, charts = [], 0
    for experiment_id in experiments:
        traffic = _frame(conn, "SELECT * FROM insights_traffic_daily WHERE experiment_id = :experiment_id "
                               "ORDER BY time_bucket", experiment_id)
        tools = _frame(conn, "SELECT * FROM insights_tools_daily WHERE experiment_id = :experiment_id", experiment_id)
        assessments = _frame(conn, "SELECT * FROM insights_assessments_daily WHERE experiment_id = :experiment_id "
                                   "ORDER BY time_bucket", experiment_id)
        causes = _frame(conn, "SELECT * FROM root_causes WHERE experiment_id = :experiment_id "
                              "ORDER BY outcome, outcome_value, rank", experiment_id)
        figures = _traffic_figures(traffic)
        if not tools.empty:
            figures.append(_tools_figure(tools))
        figures += [f for f in (_feedback_figure(assessments), _root_cause_figure(causes)) if f is not None]
        charts += len(figures)
        body = "".join(
            f'<div class="chart">{f.to_html(full_html=False, include_plotlyjs=False, default_height=360)}</div>'
            for f in figures
        )
        sections.append(
            f"<section><h2>Experiment {html.escape(experiment_id)}: {int(traffic['count'].sum())} traces</h2>"
            f"{body}<h3>Top root causes</h3>{_root_cause_table(causes)}</section>"
        )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>llmops insights</title>"
        f"<script>{get_plotlyjs()}</script><style>body{{font-family:sans-serif;margin:2em}}"
        ".chart{margin-bottom:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        f"</style></head><body><h1>Trace insights</h1><p>Generated {generated} from the DuckDB warehouse.</p>"
        + ("".join(sections) or "<p>The warehouse has no traces yet.</p>") + "</body></html>",
        encoding="utf-8",
    )
    return Report(path=path, charts=charts, experiments=experiments)
