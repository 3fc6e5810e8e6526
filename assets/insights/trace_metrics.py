"""MLflow's trace metrics (`query_trace_metrics`, the store API behind MLflow's own Overview dashboard), answered
from the warehouse with MLflow's semantics (mlflow/store/tracking/utils/sql_trace_metrics_utils.py):

- the request is validated by MLflow's own functions, so a bad one fails with MLflow's error code and message;
- traces are counted and bucketed by their start (`timestamp_ms`), assessments by their trace's start, spans by
  their own start; span count and latency are ranged by the trace's start, span costs by the span's start
  (inclusive end millisecond), as MLflow does;
- span latency is in whole milliseconds (integer division); percentiles interpolate linearly;
- rows whose metric or any requested dimension is NULL are left out, and so are overridden assessments.

Differences, on purpose: an experiment the warehouse does not know is RESOURCE_DOES_NOT_EXIST (MLflow answers
zeros), and `max_results` pages with a `page_token` (MLflow's store ignores the token and returns one page).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from mlflow.tracing.analysis import TraceFilterCorrelationResult
from mlflow.entities.trace_metrics import AggregationType, MetricAggregation, MetricDataPoint, MetricViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.protos.service_pb2 import CalculateTraceFilterCorrelation, QueryTraceMetrics
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import MAX_RESULTS_QUERY_TRACE_METRICS
from mlflow.store.tracking.utils.sql_trace_metrics_utils import TIME_BUCKET_LABEL, validate_query_trace_metrics_params
from mlflow.store.tracking.utils.trace_analytics import (
    TRACE_ANALYTICS_COLUMNS_BY_METADATA_KEY,
    get_trace_analytics_metadata_filter,
)
from mlflow.tracing.constant import TraceMetadataKey, TraceTagKey
from mlflow.utils.search_utils import SearchTraceMetricsUtils
from mlflow.utils.validation import _parse_experiment_ids

from assets.insights.queries import (
    HOUR_MS,
    ROLLUPS_STATE,
    bucket_start,
    describes_warehouse,
    hour_split,
    in_bitmap,
    in_hours,
    known_experiments,
    top_trace_key,
)
from assets.insights.trace_filters import calculate_trace_filter_correlation
from resources.warehouse import attached_engine, has_table

COST_RESOLUTION = 1e-12  # USD: the warehouse keeps costs rounded to it (assets/traces/extract.py)


class Cost(sa.types.TypeDecorator):
    """A cost column. Equal to a value within the rounding the warehouse applies, so a filter on MLflow's exact
    cost JSON (`trace.metadata.mlflow.trace.cost = '{"total_cost": 0.30000000000000004, ...}'`) finds its trace."""

    impl, cache_ok = sa.Float, True

    class comparator_factory(sa.Float.Comparator):  # noqa: N801 - SQLAlchemy's name
        def __eq__(self, other):
            return sa.func.abs(self.expr - other) <= COST_RESOLUTION


T = sa.table(
    "traces", sa.column("trace_id"), sa.column("trace_key"), sa.column("experiment_id"), sa.column("timestamp_ms"),
    sa.column("execution_time_ms"), sa.column("status"), sa.column("trace_name"), sa.column("session_id"),
    sa.column("input_tokens"), sa.column("output_tokens"), sa.column("total_tokens"),
    sa.column("cache_read_input_tokens"), sa.column("cache_creation_input_tokens"),
    sa.column("cache_creation_input_tokens_above_1hr"),
    sa.column("input_cost", Cost), sa.column("output_cost", Cost), sa.column("total_cost", Cost),
).alias("t")
S = sa.table(
    "spans", sa.column("trace_id"), sa.column("trace_key"), sa.column("span_id"), sa.column("name"),
    sa.column("span_type"), sa.column("status"), sa.column("start_time_ns"), sa.column("end_time_ns"), sa.column("model_name"),
    sa.column("model_provider"), sa.column("input_cost"), sa.column("output_cost"), sa.column("total_cost"),
    sa.column("experiment_id"), sa.column("trace_timestamp_ms"),
).alias("s")
A = sa.table(
    "assessments", sa.column("assessment_id"), sa.column("trace_id"), sa.column("trace_key"),
    sa.column("experiment_id"), sa.column("trace_timestamp_ms"), sa.column("name"), sa.column("assessment_type"), sa.column("value_json"),
    sa.column("aggregate_value"), sa.column("valid"),
).alias("a")
TAGS = sa.table("trace_tags", sa.column("trace_key"), sa.column("key"), sa.column("value")).alias("tag")
METADATA = sa.table("trace_metadata", sa.column("trace_key"), sa.column("key"), sa.column("value")).alias("meta")
LINKS = sa.table("trace_links", sa.column("trace_id"), sa.column("kind"), sa.column("target_id")).alias("link")

NS_PER_MS = 1_000_000
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class View:
    """Where one view type's rows live: its FROM clause, its experiment column, which rows count, and the time
    its buckets read (epoch ms)."""

    source: sa.FromClause
    experiment_id: sa.ColumnElement
    bucket_time_ms: sa.ColumnElement
    rows: sa.ColumnElement[bool] = sa.true()


VIEWS = {
    MetricViewType.TRACES: View(T, T.c.experiment_id, T.c.timestamp_ms),
    # A span row carries its trace's experiment (MLflow's log_spans sets it from the trace) and start (the
    # extract copies it): no join with the traces, whose 7.8M-row hash join took most of a span query's time at
    # 1M traces. Trace-level filters select the span's trace, as for assessments.
    MetricViewType.SPANS: View(S, S.c.experiment_id, sa.literal_column(f"s.start_time_ns // {NS_PER_MS}")),
    # An assessment overridden by a later one (mlflow.override_feedback) is not counted twice.
    MetricViewType.ASSESSMENTS: View(A, A.c.experiment_id, A.c.trace_timestamp_ms, A.c.valid),
}

# (view, metric) -> the column aggregated. MLflow's VIEW_TYPE_CONFIGS says which aggregations and dimensions
# each metric allows; validation reads it.
METRICS: dict[tuple[MetricViewType, str], sa.ColumnElement] = {
    (MetricViewType.TRACES, "trace_count"): T.c.trace_id,
    (MetricViewType.TRACES, "session_count"): sa.distinct(T.c.session_id),
    (MetricViewType.TRACES, "latency"): T.c.execution_time_ms,
    **{(MetricViewType.TRACES, name): T.c[name] for name in (
        "input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")},
    (MetricViewType.SPANS, "span_count"): S.c.span_id,
    (MetricViewType.SPANS, "latency"): sa.literal_column("(s.end_time_ns - s.start_time_ns) // 1000000"),
    **{(MetricViewType.SPANS, name): S.c[name] for name in ("input_cost", "output_cost", "total_cost")},
    (MetricViewType.ASSESSMENTS, "assessment_count"): A.c.assessment_id,
    (MetricViewType.ASSESSMENTS, "assessment_value"): A.c.aggregate_value,
}
SPAN_COSTS = {"input_cost", "output_cost", "total_cost"}  # ranged by the span's own start, not its trace's
# Metrics counting a NOT NULL key: count(*) needs no read of the (string) key column, ~half of a daily count's time.
ROW_COUNTS = {(MetricViewType.TRACES, "trace_count"), (MetricViewType.SPANS, "span_count"),
              (MetricViewType.ASSESSMENTS, "assessment_count")}

DIMENSIONS: dict[tuple[MetricViewType, str], sa.ColumnElement] = {
    (MetricViewType.TRACES, "trace_name"): T.c.trace_name,
    (MetricViewType.TRACES, "trace_status"): T.c.status,
    (MetricViewType.SPANS, "span_name"): S.c.name,
    (MetricViewType.SPANS, "span_type"): S.c.span_type,
    (MetricViewType.SPANS, "span_status"): S.c.status,
    (MetricViewType.SPANS, "span_model_name"): S.c.model_name,
    (MetricViewType.SPANS, "span_model_provider"): S.c.model_provider,
    (MetricViewType.ASSESSMENTS, "assessment_name"): A.c.name,
    (MetricViewType.ASSESSMENTS, "assessment_value"): A.c.value_json,
}

AGGREGATIONS = {
    AggregationType.COUNT: sa.func.count,
    AggregationType.SUM: sa.func.sum,
    AggregationType.AVG: sa.func.avg,
    AggregationType.MIN: sa.func.min,
    AggregationType.MAX: sa.func.max,
}


def _aggregates(aggregations: list[MetricAggregation], column: sa.ColumnElement | None) -> list[sa.ColumnElement]:
    """One SQL aggregate per aggregation (`column` None: count rows). Percentiles interpolate linearly, as
    MLflow's; all of them come from one list-form quantile_cont, so DuckDB sorts once (each percentile on its
    own sorted again: 4x slower for P50/P90/P95/P99). The fractions are the requested floats, exactly."""
    fractions = list(dict.fromkeys(a.percentile_value / 100 for a in aggregations
                                   if a.aggregation_type == AggregationType.PERCENTILE))
    if fractions:
        quantiles = sa.func.quantile_cont(
            column, sa.literal_column("[" + ", ".join(f"CAST('{float(f)!r}' AS DOUBLE)" for f in fractions) + "]"),
            type_=sa.ARRAY(sa.Double))
    return [quantiles[fractions.index(a.percentile_value / 100) + 1]
            if a.aggregation_type == AggregationType.PERCENTILE
            else sa.func.count() if column is None else AGGREGATIONS[a.aggregation_type](column)
            for a in aggregations]


def _trace_filter(conn: sa.Connection, entity: str, key: str | None, value: str) -> sa.ColumnElement[bool]:
    """A `trace.<entity>[.<key>] = value` filter as a predicate on the trace `t`. Tags and metadata are a bit
    test in the bitmap of the matching rows' trace keys (`in_bitmap`). DuckDB runs a correlated EXISTS as a delim
    join that first groups every trace id (2x slower at 1M traces), and a semi join hashes the keys and probes the
    hash with every trace (a tag filter at 1M: 46-56 ms as a semi join, 37-43 ms as a bit test)."""
    if entity == "status":
        return T.c.status == value
    if entity == "tag":
        if key == TraceTagKey.TRACE_NAME:
            return T.c.trace_name == value
        return in_bitmap(T.c.trace_key, sa.select(TAGS.c.trace_key).where(TAGS.c.key == key, TAGS.c.value == value),
                         top_trace_key(conn))
    # metadata: the keys MLflow keeps as columns are columns here too
    if key == TraceMetadataKey.TRACE_SESSION:
        return T.c.session_id == value
    if key in TRACE_ANALYTICS_COLUMNS_BY_METADATA_KEY:
        return get_trace_analytics_metadata_filter(key, "=", value, T.c)
    named = in_bitmap(T.c.trace_key, sa.select(METADATA.c.trace_key).where(METADATA.c.key == key,
                                                                            METADATA.c.value == value),
                      top_trace_key(conn))
    if key == TraceMetadataKey.SOURCE_RUN:  # also the traces linked to the run (mlflow.genai.evaluate), as MLflow
        return named | T.c.trace_id.in_(sa.select(LINKS.c.trace_id).where(LINKS.c.kind == "run",
                                                                           LINKS.c.target_id == value))
    return named


# `<view>.<entity>` filters on spans and assessments: the column compared.
ROW_FILTERS = {
    ("span", "name"): S.c.name, ("span", "status"): S.c.status, ("span", "type"): S.c.span_type,
    ("assessment", "name"): A.c.name, ("assessment", "type"): A.c.assessment_type,
}
FILTER_VIEWS = {"span": MetricViewType.SPANS, "assessment": MetricViewType.ASSESSMENTS}


def _filter(conn: sa.Connection, filter_string: str, view_type: MetricViewType) -> sa.ColumnElement[bool]:
    parsed = SearchTraceMetricsUtils.parse_search_filter(filter_string)  # MLflow's parser and its errors
    if parsed.view_type == "trace":
        predicate = _trace_filter(conn, parsed.entity, parsed.key, parsed.value)
        if view_type == MetricViewType.TRACES:
            return predicate
        row = A if view_type == MetricViewType.ASSESSMENTS else S
        # the row's trace passes
        return in_bitmap(row.c.trace_key, sa.select(T.c.trace_key).where(predicate), top_trace_key(conn))
    if FILTER_VIEWS[parsed.view_type] != view_type:
        raise MlflowException.invalid_parameter_value(
            f"Filtering by {parsed.view_type} is only supported for {FILTER_VIEWS[parsed.view_type]} view type, "
            f"got {view_type}")
    return ROW_FILTERS[parsed.view_type, parsed.entity] == parsed.value


def _at_least(column: sa.ColumnElement, bound: int) -> sa.ColumnElement[bool]:
    # Bounds beyond BIGINT are constant predicates, never overflowing binds (as MLflow).
    return sa.false() if bound > BIGINT_MAX else column >= bound if bound > BIGINT_MIN else sa.true()


def _at_most(column: sa.ColumnElement, bound: int) -> sa.ColumnElement[bool]:
    return sa.false() if bound < BIGINT_MIN else column <= bound if bound < BIGINT_MAX else sa.true()


def _time_range(view_type: MetricViewType, metric_name: str, start_ms: int | None,
                end_ms: int | None) -> list[sa.ColumnElement[bool]]:
    """Both ends inclusive. Span costs are ranged by the span's start in ns, through the last ns of `end_ms`."""
    if view_type == MetricViewType.SPANS and metric_name in SPAN_COSTS:
        column = S.c.start_time_ns
        start = None if start_ms is None else start_ms * NS_PER_MS
        end = None if end_ms is None else (end_ms + 1) * NS_PER_MS - 1
    else:
        column = {MetricViewType.ASSESSMENTS: A.c.trace_timestamp_ms,
                  MetricViewType.SPANS: S.c.trace_timestamp_ms}.get(view_type, T.c.timestamp_ms)
        start, end = start_ms, end_ms
    return ([] if start is None else [_at_least(column, start)]) + ([] if end is None else [_at_most(column, end)])


# The span view's hourly rollup (`mlflow_spans_hourly`, rebuilt by the insights_rollups asset): per experiment,
# trace hour, span hour and every span dimension, the span count and, per metric, its count, sum, min and max.
# Counts and costs are summed over a whole-hour range from it, and only the parts of hours at the range's ends
# are read from the spans (1.75M cost rows at 1M traces: 50 ms; the rollup and two part-hours: a few ms).
# Percentiles cannot be summed: they read the spans.
SPAN_ROLLUP_METRICS = ("latency", "input_cost", "output_cost", "total_cost")
SPAN_ROLLUP_DIMENSIONS = ("span_name", "span_type", "span_status", "span_model_name", "span_model_provider")
SPAN_ROLLUP_FILTERS = {("span", "name"): "span_name", ("span", "status"): "span_status", ("span", "type"): "span_type"}
SPAN_ROLLUP = sa.table(
    "mlflow_spans_hourly", sa.column("experiment_id"), sa.column("trace_hour"), sa.column("span_hour"),
    *(sa.column(d) for d in SPAN_ROLLUP_DIMENSIONS), sa.column("span_count"),
    *(sa.column(f"{m}_{part}") for m in SPAN_ROLLUP_METRICS for part in ("count", "sum", "min", "max")),
).alias("r")
ROLLABLE_AGGREGATIONS = {AggregationType.COUNT, AggregationType.SUM, AggregationType.AVG, AggregationType.MIN,
                         AggregationType.MAX}


def span_rollup_query() -> sa.Select:
    """What fills `mlflow_spans_hourly`."""
    dimensions = [DIMENSIONS[MetricViewType.SPANS, d].label(d) for d in SPAN_ROLLUP_DIMENSIONS]
    hours = [bucket_start(S.c.trace_timestamp_ms, HOUR_MS).label("trace_hour"),
             bucket_start(VIEWS[MetricViewType.SPANS].bucket_time_ms, HOUR_MS).label("span_hour")]
    partials = [sa.func.count().label("span_count")]
    for metric in SPAN_ROLLUP_METRICS:
        column = METRICS[MetricViewType.SPANS, metric]
        partials += [sa.func.count(column).label(f"{metric}_count"), sa.func.sum(column).label(f"{metric}_sum"),
                     sa.func.min(column).label(f"{metric}_min"), sa.func.max(column).label(f"{metric}_max")]
    keys = [S.c.experiment_id, *hours, *dimensions]
    return sa.select(*keys, *partials).select_from(S).group_by(*keys)


def _partials(metric_name: str, source: sa.FromClause | None = None) -> list[sa.ColumnElement]:
    """(count, sum, min, max) of the metric: the rollup's columns (`source` None: from the spans, grouped)."""
    if source is not None:
        if metric_name == "span_count":
            return [source.c.span_count, sa.null(), sa.null(), sa.null()]
        return [source.c[f"{metric_name}_{part}"] for part in ("count", "sum", "min", "max")]
    if metric_name == "span_count":
        return [sa.func.count(), sa.null(), sa.null(), sa.null()]
    column = METRICS[MetricViewType.SPANS, metric_name]
    return [sa.func.count(column), sa.func.sum(column), sa.func.min(column), sa.func.max(column)]


def _bucket(time_ms: sa.ColumnElement, time_interval_seconds: int) -> sa.ColumnElement:
    """The start (epoch ms) of the epoch-aligned bucket holding `time_ms`. A literal, not a bind: SELECT and
    GROUP BY must be the same expression."""
    bucket_ms = sa.literal_column(str(int(time_interval_seconds) * 1000))
    return sa.func.floor(time_ms / bucket_ms) * bucket_ms


def _span_rollup_select(conn: sa.Connection, experiment_ids: list[str], metric_name: str,
                        aggregations: list[MetricAggregation], dimensions: list[str], filters: list[str],
                        time_interval_seconds: int | None, start_time_ms: int | None,
                        end_time_ms: int | None) -> tuple[list[sa.ColumnElement], sa.Select] | None:
    """The span view's groups and aggregates summed from `mlflow_spans_hourly` for the whole hours of the range
    and read from the spans for the parts of hours at its ends; None when the rollup cannot answer (a percentile,
    a trace filter, buckets that are not whole hours, or a rollup that does not describe the warehouse now)."""
    if (metric_name != "span_count" and metric_name not in SPAN_ROLLUP_METRICS
            or any(a.aggregation_type not in ROLLABLE_AGGREGATIONS for a in aggregations)
            or time_interval_seconds and (time_interval_seconds * 1000) % HOUR_MS):
        return None
    parsed = [SearchTraceMetricsUtils.parse_search_filter(f) for f in filters]
    if any((p.view_type, p.entity) not in SPAN_ROLLUP_FILTERS for p in parsed):
        return None
    whole, edges = hour_split(start_time_ms, end_time_ms)
    if whole is None or not has_table(conn, SPAN_ROLLUP.original.name) \
            or not describes_warehouse(conn, ROLLUPS_STATE):
        return None
    r, view = SPAN_ROLLUP, VIEWS[MetricViewType.SPANS]
    hour = "span_hour" if metric_name in SPAN_COSTS else "trace_hour"  # as `_time_range` ranges the metric
    from_rollup = sa.select(
        *([_bucket(r.c.span_hour, time_interval_seconds)] if time_interval_seconds else []),
        *(r.c[d] for d in dimensions), *_partials(metric_name, r),
    ).where(*in_hours(experiment_ids, r.c.experiment_id, r.c[hour], *whole),
            *(r.c[SPAN_ROLLUP_FILTERS[p.view_type, p.entity]] == p.value for p in parsed),
            *(r.c[d].is_not(None) for d in dimensions),
            *([] if metric_name == "span_count" else [r.c[f"{metric_name}_count"] > 0]))
    groups = ([_bucket(view.bucket_time_ms, time_interval_seconds)] if time_interval_seconds else []) \
        + [DIMENSIONS[MetricViewType.SPANS, d] for d in dimensions]
    # One scan per part-hour: a single range prunes the spans' row groups, an OR of two ranges reads them all.
    parts = [from_rollup, *(sa.select(*groups, *_partials(metric_name)).select_from(S).where(
        S.c.experiment_id.in_(experiment_ids), *(_filter(conn, f, MetricViewType.SPANS) for f in filters),
        *_time_range(MetricViewType.SPANS, metric_name, low, high),
        *(group.is_not(None) for group in groups[bool(time_interval_seconds):]),
    ).group_by(*groups) for low, high in edges)]
    rows = sa.union_all(*parts).subquery("parts")
    columns = list(rows.c)
    groups = columns[:-4]
    n, total, low, high = columns[-4:]
    finals = {AggregationType.COUNT: sa.func.coalesce(sa.func.sum(n), 0),  # counting nothing is 0, as count()
              AggregationType.SUM: sa.func.sum(total),
              AggregationType.AVG: sa.cast(sa.func.sum(total), sa.Double) / sa.func.sum(n),
              AggregationType.MIN: sa.func.min(low), AggregationType.MAX: sa.func.max(high)}
    return groups, sa.select(*groups, *(finals[a.aggregation_type] for a in aggregations)).group_by(*groups)


def _iso_bucket(bucket_ms) -> str:
    return datetime.fromtimestamp(float(bucket_ms) / 1000.0, tz=timezone.utc).isoformat()


def _offset(page_token: str | None) -> int:
    if not page_token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(page_token.encode()))["offset"]
        if isinstance(offset, int) and offset >= 0:
            return offset
    except (ValueError, KeyError, TypeError):
        pass
    raise MlflowException.invalid_parameter_value(f"Invalid page_token '{page_token[:100]}'")


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def check_experiments(conn: sa.Connection, experiment_ids: list) -> list[str]:
    """The ids as the warehouse keeps them (strings of MLflow's integer ids); one the warehouse does not know is
    RESOURCE_DOES_NOT_EXIST."""
    ids = [str(i) for i in _parse_experiment_ids(experiment_ids)]
    known = known_experiments(conn, ids)
    if unknown := [i for i in ids if i not in known]:
        raise MlflowException(f"Experiment(s) {', '.join(unknown[:10])} not found in the tracking store the "
                              "warehouse copies (as of its last extract).", RESOURCE_DOES_NOT_EXIST)
    return ids


def query_trace_metrics(
    conn: sa.Connection, experiment_ids: list[str], view_type: MetricViewType, metric_name: str,
    aggregations: list[MetricAggregation], dimensions: list[str] | None = None, filters: list[str] | None = None,
    time_interval_seconds: int | None = None, start_time_ms: int | None = None, end_time_ms: int | None = None,
    max_results: int = MAX_RESULTS_QUERY_TRACE_METRICS, page_token: str | None = None,
) -> PagedList[MetricDataPoint]:
    validate_query_trace_metrics_params(view_type, metric_name, aggregations, dimensions)
    if time_interval_seconds and (start_time_ms is None or end_time_ms is None):
        raise MlflowException.invalid_parameter_value(
            "start_time_ms and end_time_ms are required if time_interval_seconds is set")
    max_results = max_results or MAX_RESULTS_QUERY_TRACE_METRICS
    offset = _offset(page_token)
    view, column = VIEWS[view_type], METRICS[view_type, metric_name]
    experiment_ids = check_experiments(conn, experiment_ids)
    where = [view.experiment_id.in_(experiment_ids), view.rows,
             *(_filter(conn, f, view_type) for f in filters or []),
             *_time_range(view_type, metric_name, start_time_ms, end_time_ms)]
    if metric_name == "session_count":
        where.append(T.c.session_id.is_not(None))
    elif (view_type, metric_name) in ROW_COUNTS:
        column = None  # count(*)
    else:  # aggregates skip NULLs anyway; dropping them first keeps all-NULL groups from taking result slots
        where.append(column.is_not(None))
    groups = []
    if time_interval_seconds:
        groups.append(_bucket(view.bucket_time_ms, time_interval_seconds))
    for dimension in dimensions or []:
        groups.append(DIMENSIONS[view_type, dimension])
        where.append(groups[-1].is_not(None))
    labels = [TIME_BUCKET_LABEL] * bool(time_interval_seconds) + list(dimensions or [])
    rolled_up = view_type == MetricViewType.SPANS and _span_rollup_select(
        conn, experiment_ids, metric_name, aggregations, list(dimensions or []), list(filters or []),
        time_interval_seconds, start_time_ms, end_time_ms)
    if rolled_up:
        groups, query = rolled_up
    else:
        query = sa.select(*groups, *_aggregates(aggregations, column)).select_from(view.source).where(*where) \
            .group_by(*groups)
    rows = conn.execute(query.order_by(*groups).offset(offset).limit(max_results + 1)).all()
    points = []
    for row in rows[:max_results]:
        dims = dict(zip(labels, row[: len(groups)]))
        if TIME_BUCKET_LABEL in dims:
            dims[TIME_BUCKET_LABEL] = _iso_bucket(dims[TIME_BUCKET_LABEL])
        values = {str(a): v for a, v in zip(aggregations, row[len(groups):]) if v is not None}
        if values:  # as MLflow: a point with no value (e.g. AVG over no rows) is left out
            points.append(MetricDataPoint(metric_name=metric_name, dimensions=dims, values=values))
    return PagedList(points, _token(offset + max_results) if len(rows) > max_results else None)


class WarehouseTraceStore:
    """MLflow's trace-analytics store methods, same signatures and answers as `SqlAlchemyStore`'s, read from the
    warehouse at `path` (opened read-only per call, so extracts can write between calls)."""

    def __init__(self, path: str):
        self.engine = attached_engine(path)

    def query_trace_metrics(self, experiment_ids: list[str], view_type: MetricViewType, metric_name: str,
                            aggregations: list[MetricAggregation], dimensions: list[str] | None = None,
                            filters: list[str] | None = None, time_interval_seconds: int | None = None,
                            start_time_ms: int | None = None, end_time_ms: int | None = None,
                            max_results: int = MAX_RESULTS_QUERY_TRACE_METRICS,
                            page_token: str | None = None) -> PagedList[MetricDataPoint]:
        with self.engine.connect() as conn:
            return query_trace_metrics(conn, experiment_ids, view_type, metric_name, aggregations, dimensions,
                                       filters, time_interval_seconds, start_time_ms, end_time_ms, max_results,
                                       page_token)

    def calculate_trace_filter_correlation(self, experiment_ids: list[str], filter_string1: str,
                                           filter_string2: str,
                                           base_filter: str | None = None) -> TraceFilterCorrelationResult:
        with self.engine.connect() as conn:
            check_experiments(conn, experiment_ids)
            return calculate_trace_filter_correlation(conn, experiment_ids, filter_string1, filter_string2,
                                                      base_filter)


def answer_query_trace_metrics(conn: sa.Connection, request: QueryTraceMetrics) -> QueryTraceMetrics.Response:
    """MLflow's REST form (`POST /api/3.0/mlflow/traces/metrics`), read as MLflow's server reads it."""
    optional = {name: getattr(request, name) if request.HasField(name) else None
                for name in ("time_interval_seconds", "start_time_ms", "end_time_ms")}
    points = query_trace_metrics(
        conn, list(request.experiment_ids), MetricViewType.from_proto(request.view_type), request.metric_name,
        [MetricAggregation.from_proto(a) for a in request.aggregations], list(request.dimensions) or None,
        list(request.filters) or None, **optional,
        max_results=request.max_results if request.HasField("max_results") else MAX_RESULTS_QUERY_TRACE_METRICS,
        page_token=request.page_token or None,
    )
    response = QueryTraceMetrics.Response()
    response.data_points.extend(point.to_proto() for point in points)
    if points.token:
        response.next_page_token = points.token
    return response


def answer_filter_correlation(conn: sa.Connection,
                              request: CalculateTraceFilterCorrelation) -> CalculateTraceFilterCorrelation.Response:
    """MLflow's REST form (`POST /api/3.0/mlflow/traces/calculate-filter-correlation`)."""
    check_experiments(conn, list(request.experiment_ids))
    return calculate_trace_filter_correlation(
        conn, list(request.experiment_ids), request.filter_string1, request.filter_string2,
        request.base_filter if request.HasField("base_filter") else None,
    ).to_proto()
