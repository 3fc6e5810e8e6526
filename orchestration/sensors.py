"""Sensors: a change to the prompt files starts the prompt release (sync -> eval -> gate -> promote); new
negative feedback in the warehouse starts labeling runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import duckdb

from assets.labeling.rules import load_rules
from assets.labeling.sessions import feedback_after, matches
from assets.prompts.files import folder_digest
from orchestration.jobs import RETRIED, labeling_job, prompt_release_job
from orchestration.schedules import automation_on
from resources.settings import DEFAULT_FEEDBACK_SETTLE_S, LLMOPS_FEEDBACK_SETTLE_S, env_float
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource, retry_while_locked

FEEDBACK_PAGE = 500  # feedback rows per run request
TICK_BUDGET_S = 30.0  # a sensor evaluation must end within 60 s
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING if automation_on() else dg.DefaultSensorStatus.STOPPED


def feedback_horizon_ms(con: duckdb.DuckDBPyConnection) -> int | None:
    """Feedback last updated after this may not all be in the warehouse yet: the last extract's read of the
    source, less LLMOPS_FEEDBACK_SETTLE_S for writes still committing then (and clocks apart). The cursor never
    passes it, so feedback that becomes visible late is not skipped."""
    try:
        read_ms = con.execute("SELECT max(source_read_ms) FROM _extract_runs").fetchone()[0]
    except duckdb.BinderException:  # a warehouse from before migration 4: its next extract adds the column
        return None
    settle_ms = int(env_float(LLMOPS_FEEDBACK_SETTLE_S, DEFAULT_FEEDBACK_SETTLE_S) * 1000)
    return None if read_ms is None else read_ms - settle_ms


@dg.sensor(
    job=prompt_release_job, minimum_interval_seconds=30, default_status=SENSOR_STATUS,
    description="Watches the content hash of the prompt files (LLMOPS_PROMPTS_DIR) and launches prompt_release "
    "once per change. The cursor counts changes, so reverting a file to earlier content is a new change too.",
)
def prompt_files_sensor(context: dg.SensorEvaluationContext, user_files: UserFilesResource):
    if not user_files.prompts.is_dir():
        return dg.SkipReason(f"prompts folder {user_files.prompts} does not exist")
    digest = folder_digest(user_files.prompts)
    cursor = json.loads(context.cursor) if context.cursor else {"digest": None, "changes": 0}
    if digest == cursor["digest"]:
        return dg.SkipReason("prompt files unchanged")
    changes = cursor["changes"] + 1
    context.update_cursor(json.dumps({"digest": digest, "changes": changes}))
    return dg.RunRequest(run_key=f"prompts-{changes}-{digest[:16]}", tags={"llmops/prompts_digest": digest[:16]})


@dg.sensor(
    job=labeling_job, minimum_interval_seconds=60, default_status=SENSOR_STATUS,
    description="Reads new feedback from the warehouse in (last-updated time, assessment id) order — its cursor — up "
    "to the last extract's read time less LLMOPS_FEEDBACK_SETTLE_S, and requests one labeling run per page that "
    "holds feedback matching a rule (labeling/rules.yaml). The run key names the page, so a re-evaluated tick starts "
    "nothing twice; runs retry, and a retried batch adds nothing twice.",
)
def negative_feedback_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource,
                             user_files: UserFilesResource):
    if not Path(warehouse.path).exists():
        return dg.SkipReason("no warehouse yet: materialize the traces group first")
    rules = load_rules(user_files.labeling_rules_path)
    cursor = json.loads(context.cursor) if context.cursor else {"last_updated_ms": -1, "assessment_id": ""}
    try:
        con = retry_while_locked(lambda: duckdb.connect(warehouse.path, read_only=True), timeout_s=15,
                                 path=warehouse.path)
    except duckdb.IOException:
        return dg.SkipReason("the warehouse is being written; trying again at the next tick")
    requests, deadline = [], time.monotonic() + TICK_BUDGET_S
    try:
        if (horizon := feedback_horizon_ms(con)) is None:
            return dg.SkipReason("no extract has recorded when it read the source yet: run warehouse_refresh")
        while time.monotonic() < deadline:
            rows = feedback_after(con, (cursor["last_updated_ms"], cursor["assessment_id"]), FEEDBACK_PAGE, horizon)
            if not rows:
                break
            matching = [r.assessment_id for r in rows if any(matches(rule, r) for rule in rules.rules)]
            first, last = rows[0], rows[-1]
            if matching:
                key = f"feedback-{first.last_updated_ms}-{first.assessment_id}-{last.last_updated_ms}-{last.assessment_id}"
                requests.append(dg.RunRequest(
                    run_key=key, tags=RETRIED,
                    run_config={"ops": {"labeling_sessions": {"config": {
                        "assessment_ids": matching, "batch_key": key, "until_ms": last.last_updated_ms}}}},
                ))
            cursor = {"last_updated_ms": last.last_updated_ms, "assessment_id": last.assessment_id}
    finally:
        con.close()
    context.update_cursor(json.dumps(cursor))
    return requests or dg.SkipReason("no new feedback matching a labeling rule")


SENSORS = [prompt_files_sensor, negative_feedback_sensor]
