"""Sensors: a change to the prompt files starts the prompt release (sync -> eval -> gate -> promote); new
negative feedback in the warehouse starts labeling runs. Built by `build_sensors` when the definitions load, so
importing this module reads no configuration."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import duckdb

from assets.labeling.rules import load_rules
from assets.labeling.sessions import FeedbackRow, feedback_after, matches
from assets.prompts.files import folder_digest
from assets.vocabulary import PROMPTS_DIGEST, PROMPTS_DIGEST_TAG
from orchestration.jobs import RETRIED, labeling_job, prompt_release_job
from resources.settings import DEFAULT_FEEDBACK_SETTLE_S, LLMOPS_FEEDBACK_SETTLE_S, env_float
from resources.user_files import UserFilesResource
from resources.warehouse import WarehouseResource, retry_while_locked

FEEDBACK_PAGE = 500  # feedback rows per run request
TICK_BUDGET_S = 30.0  # a sensor evaluation must end within 60 s


def released_digest(instance: dg.DagsterInstance) -> str | None:
    """The digest of the prompt files the last prompt_registry materialization synced, if it recorded one."""
    event = instance.get_latest_materialization_event(dg.AssetKey("prompt_registry"))
    recorded = event.asset_materialization.metadata.get(PROMPTS_DIGEST) if event else None
    return recorded.value if recorded else None


def prompt_files_changed(context: dg.SensorEvaluationContext, user_files: UserFilesResource):
    if not user_files.prompts.is_dir():
        return dg.SkipReason(f"prompts folder {user_files.prompts} does not exist")
    digest = folder_digest(user_files.prompts)
    # A first tick compares with what the registry already holds: files released before are no change.
    cursor = json.loads(context.cursor) if context.cursor else {"digest": released_digest(context.instance),
                                                                "changes": 0}
    if digest == cursor["digest"]:
        context.update_cursor(json.dumps(cursor))
        return dg.SkipReason("prompt files unchanged since their last release")
    changes = cursor["changes"] + 1
    context.update_cursor(json.dumps({"digest": digest, "changes": changes}))
    return dg.RunRequest(run_key=f"prompts-{changes}-{digest[:16]}", tags={PROMPTS_DIGEST_TAG: digest[:16]})


def feedback_horizon_ms(con: duckdb.DuckDBPyConnection) -> int | None:
    """Feedback last updated after this may not all be in the warehouse yet: the last extract's read of the
    source, less LLMOPS_FEEDBACK_SETTLE_S for writes still committing then (and clocks apart)."""
    try:
        read_ms = con.execute("SELECT max(source_read_ms) FROM _extract_runs").fetchone()[0]
    except duckdb.BinderException:  # a warehouse from before migration 4: its next extract adds the column
        return None
    settle_ms = int(env_float(LLMOPS_FEEDBACK_SETTLE_S, DEFAULT_FEEDBACK_SETTLE_S) * 1000)
    return None if read_ms is None else read_ms - settle_ms


def position(row: FeedbackRow) -> tuple[int, str]:
    """Where the feedback is in the sensor's order: (last-updated time, assessment id)."""
    return row.last_updated_ms, row.assessment_id


def labeling_request(batch: list[FeedbackRow], controls_until_ms: int) -> dg.RunRequest:
    """One labeling run for `batch`; its key names the batch's first and last feedback, which no other batch
    holds (each feedback is routed once), so a re-evaluated tick starts it once."""
    first, last = batch[0], batch[-1]
    key = f"feedback-{first.last_updated_ms}-{first.assessment_id}-{last.last_updated_ms}-{last.assessment_id}"
    return dg.RunRequest(run_key=key, tags=RETRIED, run_config={"ops": {"labeling_sessions": {"config": {
        "assessment_ids": [r.assessment_id for r in batch], "batch_key": key, "until_ms": controls_until_ms}}}})


def new_negative_feedback(context: dg.SensorEvaluationContext, warehouse: WarehouseResource,
                          user_files: UserFilesResource):
    """Routes the matching feedback the warehouse holds, each (assessment id, last-updated time) once. The
    cursor's position never passes the horizon, so feedback committed late is still read after it; the feedback
    routed beyond the position is remembered (`routed`), so reading it again routes nothing, and forgotten once
    the position passes it."""
    if not Path(warehouse.path).exists():
        return dg.SkipReason("no warehouse yet: materialize the traces group first")
    rules = load_rules(user_files.labeling_rules_path)
    cursor = json.loads(context.cursor) if context.cursor else {"last_updated_ms": -1, "assessment_id": ""}
    settled = (cursor["last_updated_ms"], cursor["assessment_id"])
    routed: dict[str, int] = cursor.get("routed", {})  # assessment id -> last-updated time, after `settled`
    try:
        con = retry_while_locked(lambda: duckdb.connect(warehouse.path, read_only=True), timeout_s=15,
                                 path=warehouse.path)
    except duckdb.IOException:
        return dg.SkipReason("the warehouse is being written; trying again at the next tick")
    requests, deadline = [], time.monotonic() + TICK_BUDGET_S
    try:
        if (horizon := feedback_horizon_ms(con)) is None:
            return dg.SkipReason("no extract has recorded when it read the source yet: run warehouse_refresh")
        read_from = settled
        while time.monotonic() < deadline and (rows := feedback_after(con, read_from, FEEDBACK_PAGE)):
            batch = [r for r in rows if routed.get(r.assessment_id) != r.last_updated_ms
                     and any(matches(rule, r) for rule in rules.rules)]
            if batch:
                # controls from the page's settled feedback, so a retried batch draws from the same pool
                requests.append(labeling_request(batch, min(rows[-1].last_updated_ms, horizon)))
                routed.update({r.assessment_id: r.last_updated_ms for r in batch})
            settled = max([settled, *(position(r) for r in rows if r.last_updated_ms <= horizon)])
            read_from = position(rows[-1])
    finally:
        con.close()
    routed = {i: ts for i, ts in routed.items() if (ts, i) > settled}
    context.update_cursor(json.dumps({"last_updated_ms": settled[0], "assessment_id": settled[1], "routed": routed}))
    return requests or dg.SkipReason("no new feedback matching a labeling rule")


def build_sensors(running: bool) -> list[dg.SensorDefinition]:
    """The sensors, started with the daemon when `running` (LLMOPS_AUTOMATION)."""
    status = dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED
    prompts = dg.sensor(
        name="prompt_files_sensor", job=prompt_release_job, minimum_interval_seconds=30, default_status=status,
        description="Watches the content hash of the prompt files (LLMOPS_PROMPTS_DIR) and launches prompt_release "
        "once per change. The cursor counts changes, so reverting a file to earlier content is a new change too. "
        "Its first tick launches nothing when the last prompt_registry materialization synced the same files.",
    )(prompt_files_changed)
    feedback = dg.sensor(
        name="negative_feedback_sensor", job=labeling_job, minimum_interval_seconds=60, default_status=status,
        description="Reads feedback from the warehouse in (last-updated time, assessment id) order and requests one "
        "labeling run per page that holds feedback matching a rule (labeling/rules.yaml), as soon as an extract has "
        "copied it. Its cursor stays LLMOPS_FEEDBACK_SETTLE_S before the last extract's read of the source, so "
        "feedback committed late is not skipped, and remembers what it routed beyond, so nothing is routed twice. "
        "Runs retry, and a retried batch adds nothing twice.",
    )(new_negative_feedback)
    return [prompts, feedback]
