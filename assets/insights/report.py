"""The insights report: one self-contained HTML page of Plotly charts, a section per experiment (no Dagster).

Production and evaluations apart: a trace made inside an MLflow run (metadata `mlflow.sourceRun`,
`registry.EVALUATION_TRACES`; every trace of mlflow.genai.evaluate) is an evaluation trace, any other a production
trace. The report charts production traffic: a section per experiment with production traces, over those traces
only. With `include_evaluations` an "Evaluations" part follows, a section per experiment with evaluation traces, over
those only. An experiment holding both appears in both parts; no chart mixes the two. Each section is drawn from the
daily rollup queries (`rollups.rollup_queries`) split by that rule, so the charts of an experiment without
evaluations equal its `insights_*_daily` rows. Root causes (the `root_causes` table, over the traces that asset was
configured to count) are shown in production sections only.

A section charts volume, latency, error rate, tokens and cost per day, the tools with their error rates, the
feedback trend, and a heatmap of what goes with each bad outcome, in plain words; its title is the experiment's name
(its id when the warehouse has no name for it). Day axes are UTC dates, a tick a day (every few days over long
ranges), padded half a day each side, with bars and markers, so a single day draws one labelled day, never a
millisecond scale. A chart of several series has a legend; a single-series chart names its series in its title.

An "Alerts" section comes first: the open alert incidents (rule, scope, condition, since when, top root causes) and
the last RESOLVED_SHOWN resolved ones with their open and resolve times; "No incidents." when there are none (also on
a warehouse whose schema predates the alert tables).

plotly.js is inlined once, so the page opens offline, from a file or served by `llmops serve` (`GET /report`). The
file is replaced whole, so a reader never gets half a report.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import sqlalchemy as sa
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from assets.alerts.listing import Incident, cause_text, list_incidents, open_span, utc_time
from assets.insights.queries import ASSESSMENTS, EXPERIMENTS, SPANS, TRACES
from assets.insights.registry import EVALUATION_TRACES
from assets.insights.rollups import rollup_queries

REPORT_FILE = "insights.html"  # in the reports folder; `llmops serve` answers it at GET /report
HEATMAP_DIMENSIONS = 15  # columns of the root-cause heatmap: the dimensions with the highest NPMI anywhere
MAX_DAY_TICKS = 15  # past this many days, a tick every few days
DAY_MS = 86_400_000
BAR_WIDTH_MS = 0.8 * DAY_MS  # a bar per day, with a gap between days
PRODUCTION, EVALUATION = "production", "evaluation"
OPEN_SHOWN, RESOLVED_SHOWN = 100, 10  # incidents of the Alerts section: open ones (newest), the last resolved
# The daily rollups the sections are drawn from, and the table whose trace_id says production or evaluation.
DAILY_ROLLUPS = {"traffic": TRACES, "tools": SPANS, "assessments": ASSESSMENTS}


@dataclass
class Section:
    kind: str  # PRODUCTION or EVALUATION
    experiment_id: str
    title: str
    figures: list[go.Figure]
    root_causes: str | None  # the top root-cause table (HTML); production sections only


@dataclass
class Report:
    path: Path
    charts: int
    experiments: list[str]  # production sections
    evaluations: list[str]  # sections of the Evaluations part


def _daily_rollups(conn: sa.Connection) -> dict[str, pd.DataFrame]:
    """Each daily rollup, with a column `kind`: its rows over production traces and over evaluation traces."""
    frames, queries = {}, rollup_queries()
    for name, table in DAILY_ROLLUPS.items():
        kind = sa.case((table.c.trace_key.in_(EVALUATION_TRACES), EVALUATION), else_=PRODUCTION).label("kind")
        query = queries[f"insights_{name}_daily"].add_columns(kind).group_by(kind).order_by("time_bucket")
        # Constants inlined, as write_rollups does: DuckDB matches a GROUP BY expression to the selected one only
        # when their constants are the same, not two parameters.
        result = conn.exec_driver_sql(str(query.compile(conn, compile_kwargs={"literal_binds": True})))
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        frame["day"] = pd.to_datetime(frame["time_bucket"], unit="ms")  # naive UTC: plotly.js has no time zones
        frames[name] = frame
    return frames


def _root_causes(conn: sa.Connection) -> pd.DataFrame:
    result = conn.execute(sa.text("SELECT * FROM root_causes ORDER BY outcome, outcome_value, rank"))
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _day_axis(days: pd.Series) -> dict:
    """An x axis of whole UTC days from the first to the last of `days`, half a day of margin each side."""
    first, last = days.min(), days.max()
    every = math.ceil(((last - first).days + 1) / MAX_DAY_TICKS)
    return {"type": "date", "range": [first - pd.Timedelta(hours=12), last + pd.Timedelta(hours=12)],
            "tick0": first, "dtick": every * DAY_MS, "tickformat": "%Y-%m-%d", "title": "day (UTC)"}


def _traffic_figures(traffic: pd.DataFrame, days: dict) -> list[go.Figure]:
    volume = go.Figure([
        go.Bar(x=traffic["day"], y=traffic["ok_count"], name="OK", marker_color="#2ca02c", width=BAR_WIDTH_MS),
        go.Bar(x=traffic["day"], y=traffic["error_count"], name="ERROR", marker_color="#d62728", width=BAR_WIDTH_MS),
    ])
    volume.update_layout(barmode="stack", title="Traces per day by status", yaxis_title="traces", xaxis=days,
                         showlegend=True)
    latency = go.Figure([
        go.Scatter(x=traffic["day"], y=traffic[f"p{p}_latency"], mode="lines+markers", name=f"p{p}")
        for p in (50, 95, 99)
    ])
    latency.update_layout(title="Latency percentiles per day (ms)", yaxis_title="ms", xaxis=days, showlegend=True)
    errors = go.Figure(go.Scatter(x=traffic["day"], y=traffic["error_count"] / traffic["count"], mode="lines+markers",
                                  name="error rate", line_color="#d62728"))
    errors.update_layout(title="Error rate per day (share of traces with status ERROR)", yaxis_tickformat=".0%",
                         yaxis_rangemode="tozero", xaxis=days)
    return [volume, latency, errors]


def _tokens_figure(traffic: pd.DataFrame, days: dict) -> go.Figure | None:
    if not (traffic["total_tokens"].any() or traffic["total_cost"].any()):
        return None  # no trace recorded its usage
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Bar(x=traffic["day"], y=traffic["input_tokens"], name="input tokens", marker_color="#1f77b4",
                            width=BAR_WIDTH_MS))
    figure.add_trace(go.Bar(x=traffic["day"], y=traffic["output_tokens"], name="output tokens", marker_color="#aec7e8",
                            width=BAR_WIDTH_MS))
    figure.add_trace(go.Scatter(x=traffic["day"], y=traffic["total_cost"], name="total cost (USD)",
                                mode="lines+markers", line_color="#ff7f0e"), secondary_y=True)
    figure.update_layout(barmode="stack", title="Tokens and cost per day", xaxis=days, showlegend=True)
    figure.update_yaxes(title_text="tokens", secondary_y=False)
    figure.update_yaxes(title_text="USD", tickformat="$.3~g", rangemode="tozero", secondary_y=True)
    return figure


def _tools_figure(tools: pd.DataFrame) -> go.Figure | None:
    if tools.empty:
        return None
    totals = tools.groupby("tool_name")[["calls", "error_count"]].sum().sort_values("calls", ascending=False)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Bar(x=totals.index, y=totals["calls"], name="calls", marker_color="#1f77b4"))
    figure.add_trace(go.Scatter(x=totals.index, y=totals["error_count"] / totals["calls"], name="error rate",
                                mode="markers", marker={"size": 14, "color": "#d62728"}), secondary_y=True)
    figure.update_layout(title="Tools: calls and error rate", xaxis_type="category", showlegend=True)
    figure.update_yaxes(title_text="calls", secondary_y=False)
    figure.update_yaxes(title_text="error rate", tickformat=".0%", rangemode="tozero", secondary_y=True)
    return figure


def _feedback_figure(assessments: pd.DataFrame, days: dict) -> go.Figure | None:
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
    figure.update_layout(title="Feedback trend (boolean feedback: share of true per day)", yaxis_tickformat=".0%",
                         yaxis_range=[0, 1.05], xaxis=days, showlegend=True)
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


def report_sections(conn: sa.Connection, include_evaluations: bool = False) -> tuple[list[Section], list[Section]]:
    """The production sections, and the Evaluations part's (empty unless `include_evaluations`), by experiment id."""
    rollups = _daily_rollups(conn)
    causes = _root_causes(conn)
    names = dict(conn.execute(sa.select(EXPERIMENTS.c.experiment_id, EXPERIMENTS.c.name)).all())
    parts: dict[str, list[Section]] = {PRODUCTION: [], EVALUATION: []}
    for kind in (PRODUCTION, EVALUATION) if include_evaluations else (PRODUCTION,):
        of_kind = {name: frame[frame["kind"] == kind] for name, frame in rollups.items()}
        for experiment_id, traffic in of_kind["traffic"].groupby("experiment_id", sort=True):
            tools, assessments = (of_kind[name][of_kind[name]["experiment_id"] == experiment_id]
                                  for name in ("tools", "assessments"))
            days = _day_axis(traffic["day"])
            figures = [*_traffic_figures(traffic, days), _tokens_figure(traffic, days), _tools_figure(tools),
                       _feedback_figure(assessments, days)]
            experiment_causes = causes[causes["experiment_id"] == experiment_id] if kind == PRODUCTION else None
            if experiment_causes is not None:
                figures.append(_root_cause_figure(experiment_causes))
            name = names.get(experiment_id) or f"Experiment {experiment_id}"
            parts[kind].append(Section(
                kind=kind, experiment_id=experiment_id, title=f"{name}: {int(traffic['count'].sum())} {kind} traces",
                figures=[f for f in figures if f is not None],
                root_causes=None if experiment_causes is None else _root_cause_table(experiment_causes)))
    return parts[PRODUCTION], parts[EVALUATION]


def _section_html(section: Section) -> str:
    heading = "h2" if section.kind == PRODUCTION else "h3"  # evaluation sections sit under "Evaluations"
    charts = "".join(
        f'<div class="chart">{f.to_html(full_html=False, include_plotlyjs=False, default_height=360)}</div>'
        for f in section.figures
    )
    causes = "" if section.root_causes is None else f"<h3>Top root causes</h3>{section.root_causes}"
    return (f'<section id="{section.kind}-{html.escape(section.experiment_id)}"><{heading}>{html.escape(section.title)}'
            f"</{heading}>{charts}{causes}</section>")


def _incident_rows(incidents: list[Incident], times: str) -> str:
    return "".join(
        f"<tr><td>{html.escape(i.rule)}</td><td>{html.escape(i.scope_name)}</td><td>{html.escape(i.condition)}</td>"
        f"<td>{html.escape(open_span(i) if times == 'span' else utc_time(i.opened_at_ms))}</td><td>"
        + ("<br>".join(html.escape(cause_text(c)) for c in i.root_causes) or "&mdash;")
        + "</td></tr>"
        for i in incidents)


def alerts_html(conn: sa.Connection) -> str:
    """The Alerts section: the open incidents, then the last resolved ones; "No incidents." without any."""
    opened = list_incidents(conn, state="open", limit=OPEN_SHOWN)
    resolved = list_incidents(conn, state="resolved", limit=RESOLVED_SHOWN)
    head = "<tr><th>rule</th><th>scope</th><th>condition</th><th>{}</th><th>goes with (top root causes)</th></tr>"
    parts = []
    if opened:
        parts.append(f"<h3>Open ({len(opened)})</h3><table class='incidents open'><thead>{head.format('since')}"
                     f"</thead><tbody>{_incident_rows(opened, 'since')}</tbody></table>")
    elif resolved:
        parts.append("<p>No open incidents.</p>")
    if resolved:
        parts.append(f"<h3>Last resolved</h3><table class='incidents resolved'><thead>"
                     f"{head.format('opened → resolved')}</thead><tbody>{_incident_rows(resolved, 'span')}"
                     "</tbody></table>")
    return f'<section id="alerts"><h2>Alerts</h2>{"".join(parts) or "<p>No incidents.</p>"}</section>'


def render_report(conn: sa.Connection, path: Path, include_evaluations: bool = False) -> Report:
    """Write the report to `path`: the alerts, then production traffic per experiment; with
    `include_evaluations`, then the Evaluations part."""
    production, evaluations = report_sections(conn, include_evaluations)
    body = alerts_html(conn)
    body += "".join(_section_html(s) for s in production) or "<p>The warehouse has no production traces yet.</p>"
    if include_evaluations:
        body += ('<section id="evaluations"><h2>Evaluations</h2><p>Traces of evaluation runs '
                 "(mlflow.genai.evaluate), kept out of the production charts above.</p>"
                 + ("".join(_section_html(s) for s in evaluations) or "<p>No evaluation traces yet.</p>")
                 + "</section>")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>llmops insights</title>"
        f"<script>{get_plotlyjs()}</script><style>body{{font-family:sans-serif;margin:2em}}"
        ".chart{margin-bottom:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        f"</style></head><body><h1>Trace insights</h1><p>Generated {generated} from the DuckDB warehouse.</p>"
        f"{body}</body></html>",
        encoding="utf-8",
    )
    os.replace(partial, path)  # atomic: `llmops serve` answers the old report or the new one, never half of one
    return Report(path=path, charts=sum(len(s.figures) for s in production + evaluations),
                  experiments=[s.experiment_id for s in production], evaluations=[s.experiment_id for s in evaluations])
