"""Group `labeling`: new negative feedback turned into labeling sessions (MLflow review queues, or Databricks
labeling sessions on a `databricks` tracking URI), and their progress."""

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from assets.failures import run_failures
from assets.labeling.rules import RulesFileError, load_rules
from assets.labeling.sessions import add_to_sessions, feedback_rows, progress_rows
from assets.traces.quality import markdown_table
from resources.mlflow import MlflowResource
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource

if TYPE_CHECKING:  # MLflow's labeling APIs are imported by the steps that use them
    from assets.labeling.backends import LabelingBackend

COMMON = dict(group_name="labeling", owners=["team:llmops-platform"], kinds={"mlflow"})
PROGRESS_COLUMNS = ["session", "rule", "experiment_id", "reviewers", "items", "pending", "completed", "declined",
                    "created_at", "age_hours", "oldest_pending_hours"]


class LabelingBatch(dg.Config):
    assessment_ids: list[str] = Field(
        default=[], description="The feedback to route (set by negative_feedback_sensor); empty: every feedback in "
        "the warehouse, which adds only what no session of its rule has yet.")
    batch_key: str = Field(default="", description="Seeds the choice of controls; the sensor's run key.")
    until_ms: int | None = Field(default=None, description="Controls come from feedback last updated by then (set "
                                 "by the sensor to settled feedback only, so a retried batch draws the same); "
                                 "default: all feedback.")


def _rules(user_files: UserFilesResource):
    try:
        return load_rules(user_files.labeling_rules_path)
    except RulesFileError as exc:
        raise dg.Failure(description=str(exc)) from None


def _backend(mlflow: MlflowResource) -> "LabelingBackend":
    from assets.labeling.backends import labeling_backend

    try:
        return labeling_backend(mlflow.tracking_uri)
    except RuntimeError as exc:
        raise dg.Failure(description=str(exc)) from None


@dg.asset(
    **COMMON, deps=["assessments"], pool="labeling",
    description="Traces with new negative feedback (labeling/rules.yaml) added to their rule's labeling session — an "
    "MLflow review queue, or a Databricks labeling session, with the rule's reviewers and label schemas — at most once per rule, plus a share of "
    "positive-feedback traces as controls.",
)
def labeling_sessions(context: dg.AssetExecutionContext, config: LabelingBatch, mlflow: MlflowResource,
                      warehouse: WarehouseResource, user_files: UserFilesResource) -> dg.MaterializeResult:
    rules = _rules(user_files)
    backend = _backend(mlflow)
    with warehouse.connect(read_only=True) as con, run_failures(mlflow):
        rows = feedback_rows(con, config.assessment_ids or None)
        mlflow.make_current()
        until = config.until_ms if config.until_ms is not None else max((r.last_updated_ms for r in rows), default=0)
        changes = add_to_sessions(backend, rules, rows, con, mlflow.tracking_uri,
                                  config.batch_key or context.run_id, until)
    for change in changes:
        context.log.info(f"{change.session} (experiment {change.experiment_id}): +{change.added} traces, "
                         f"+{change.controls} controls")
    return dg.MaterializeResult(metadata={
        "feedback_in_batch": dg.MetadataValue.int(len(rows)),
        "traces_added": dg.MetadataValue.int(sum(c.added for c in changes)),
        "controls_added": dg.MetadataValue.int(sum(c.controls for c in changes)),
        "sessions": dg.MetadataValue.md(markdown_table(
            ["rule", "experiment", "session", "traces added", "controls added"],
            [(c.rule, c.experiment_id, c.session, c.added, c.controls) for c in changes]) if changes else "Nothing new."),
    })


@dg.asset(
    **COMMON, deps=[labeling_sessions], pool="duckdb_write",
    description="Per labeling session: items pending, completed and declined, reviewers and age (table "
    "labeling_progress in the warehouse).",
)
def labeling_progress(mlflow: MlflowResource, warehouse: WarehouseResource,
                      user_files: UserFilesResource) -> dg.MaterializeResult:
    rules = _rules(user_files)
    with warehouse.connect(read_only=True) as con:
        experiments = [r[0] for r in con.execute("SELECT DISTINCT experiment_id FROM traces ORDER BY 1").fetchall()]
    with run_failures(mlflow):
        mlflow.make_current()
        rows = progress_rows(_backend(mlflow), rules, experiments, int(time.time() * 1000))
    with warehouse.connect() as con:
        con.execute("""CREATE OR REPLACE TABLE labeling_progress (session VARCHAR, rule VARCHAR, experiment_id VARCHAR,
            reviewers VARCHAR, items INTEGER, pending INTEGER, completed INTEGER, declined INTEGER,
            created_at TIMESTAMP, age_hours DOUBLE, oldest_pending_hours DOUBLE)""")
        if rows:
            con.executemany(f"INSERT INTO labeling_progress VALUES ({', '.join('?' * len(PROGRESS_COLUMNS))})", rows)
    return dg.MaterializeResult(metadata={
        "sessions": dg.MetadataValue.int(len(rows)),
        "pending": dg.MetadataValue.int(sum(r[5] for r in rows)),
        "completed": dg.MetadataValue.int(sum(r[6] for r in rows)),
        "progress": dg.MetadataValue.md(markdown_table(PROGRESS_COLUMNS, rows) if rows else "No labeling session yet."),
        "as_of": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
