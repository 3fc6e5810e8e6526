"""Sensors: a change to the prompt files starts the prompt release (sync -> eval -> gate -> promote)."""

from __future__ import annotations

import json

import dagster as dg

from assets.prompts.files import folder_digest
from orchestration.jobs import prompt_release_job
from resources.user_files import UserFilesResource


@dg.sensor(
    job=prompt_release_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
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


SENSORS = [prompt_files_sensor]
