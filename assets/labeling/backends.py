"""Where labeling sessions live: MLflow review queues on a tracking store, Databricks labeling sessions (the
Review App, through `mlflow.genai.labeling` and databricks-agents) on a `databricks` tracking URI. Both are seen
through the same small interface, so the routing rules in `sessions.py` are written once."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import mlflow
from mlflow.entities import Trace, TraceData, TraceInfo, TraceLocation, TraceState
from mlflow.genai import label_schemas, labeling, review_queues
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.utils.uri import is_databricks_uri

from assets.labeling.rules import LabelSchemaSpec


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    reviewers: list[str]
    created_ms: int
    handle: object  # the backend's own session object


@dataclass(frozen=True)
class Item:
    trace_id: str
    status: str  # pending, complete or declined
    created_ms: int


class LabelingBackend(Protocol):
    def ensure_schemas(self, experiment_id: str, specs: list[LabelSchemaSpec]) -> list[str]: ...
    def sessions(self, experiment_id: str) -> list[Session]: ...
    def items(self, session: Session) -> list[Item]: ...
    def create(self, experiment_id: str, name: str, reviewers: list[str], schemas: list[str]) -> Session: ...
    def add(self, session: Session, trace_ids: list[str]) -> None: ...


def labeling_backend(tracking_uri: str) -> LabelingBackend:
    return DatabricksLabelingSessions() if is_databricks_uri(tracking_uri) else ReviewQueues()


def _schema_input(spec: LabelSchemaSpec, databricks: bool):
    i = spec.input
    if i.kind == "pass_fail" and databricks:  # the Review App has no pass/fail widget: a two-option dropdown
        return label_schemas.InputCategorical(options=[i.positive_label, i.negative_label])
    return {
        "pass_fail": lambda: label_schemas.InputPassFail(positive_label=i.positive_label, negative_label=i.negative_label),
        "categorical": lambda: label_schemas.InputCategorical(options=i.options),
        "categorical_list": lambda: label_schemas.InputCategoricalList(options=i.options),
        "numeric": lambda: label_schemas.InputNumeric(min_value=i.min_value, max_value=i.max_value),
        "text": lambda: label_schemas.InputText(max_length=i.max_length),
        "text_list": lambda: label_schemas.InputTextList(max_length_each=i.max_length),
    }[i.kind]()


class ReviewQueues:
    """MLflow's review queues and label schemas (its fluent API: the caller points MLflow at the store)."""

    def ensure_schemas(self, experiment_id: str, specs: list[LabelSchemaSpec]) -> list[str]:
        """The label schemas' ids in the experiment, creating the missing ones (once: found by name after)."""
        existing = {s.name: s.schema_id for s in label_schemas.list_label_schemas(experiment_id, max_results=1000)}
        for spec in specs:
            if spec.name not in existing:
                # `title` is a Databricks Review App field: a tracking store shows it as the instruction's first line
                instruction = "\n\n".join(text for text in (spec.title, spec.instruction) if text) or None
                existing[spec.name] = label_schemas.create_label_schema(
                    spec.name, type=spec.type, input=_schema_input(spec, databricks=False), instruction=instruction,
                    enable_comment=spec.enable_comment, experiment_id=experiment_id,
                ).schema_id
        return [existing[spec.name] for spec in specs]

    @staticmethod
    def _session(queue) -> Session:
        return Session(queue.queue_id, queue.name, list(queue.users), queue.creation_time_ms, queue)

    def sessions(self, experiment_id: str) -> list[Session]:
        queues, token = [], None
        while True:
            page = review_queues.list_review_queues(experiment_id=experiment_id, max_results=100, page_token=token)
            queues += [self._session(q) for q in page]
            if not (token := page.token):
                return queues

    def items(self, session: Session) -> list[Item]:
        items, token = [], None
        while True:
            page = review_queues.list_review_queue_items(session.id, max_results=500, page_token=token)
            items += [Item(i.item_id, i.status.value, i.creation_time_ms) for i in page]
            if not (token := page.token):
                return items

    def create(self, experiment_id: str, name: str, reviewers: list[str], schemas: list[str]) -> Session:
        return self._session(review_queues.create_review_queue(
            name, queue_type="custom", users=reviewers, schema_ids=schemas, experiment_id=experiment_id))

    def add(self, session: Session, trace_ids: list[str]) -> None:
        review_queues.add_items_to_review_queue(session.id, item_ids=trace_ids)


# Review App item states → the review queues' statuses
_DATABRICKS_STATUS = {"PENDING": "pending", "IN_PROGRESS": "pending", "COMPLETED": "complete", "SKIPPED": "declined"}


@contextlib.contextmanager
def _registry_uri_kept():
    """databricks-agents points the whole process's model registry at Unity Catalog on first use (and exports
    MLFLOW_REGISTRY_URI); labeling must not move where models are registered. MLflow has no API to unset a
    registry URI, so the setting is put back as it was, unset included."""
    before, env = registry_utils._registry_uri, os.environ.get("MLFLOW_REGISTRY_URI")
    try:
        yield
    finally:
        registry_utils._registry_uri = before
        if env is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        else:
            os.environ["MLFLOW_REGISTRY_URI"] = env


class DatabricksLabelingSessions:
    """Labeling sessions of the experiment's Databricks Review App, through `mlflow.genai.labeling` (label
    schemas are the app's, found by name). Listing a session's items has no MLflow API: that one call goes
    through the databricks-agents client the Review App itself uses."""

    def __init__(self):
        try:
            from databricks.rag_eval.review_app.entities import _get_client
        except ImportError:
            raise RuntimeError("Labeling sessions on Databricks need the databricks-agents package: "
                               "pip install 'llmops-platform[databricks]'") from None
        self._agents_client = _get_client

    @staticmethod
    def _session(session) -> Session:
        run = mlflow.MlflowClient().get_run(session.mlflow_run_id)
        return Session(session.labeling_session_id, session.name, list(session.assigned_users),
                       run.info.start_time, session)

    def ensure_schemas(self, experiment_id: str, specs: list[LabelSchemaSpec]) -> list[str]:
        mlflow.set_experiment(experiment_id=experiment_id)  # the fluent API finds the Review App by it
        with _registry_uri_kept():
            existing = {s.name for s in labeling.get_review_app(experiment_id).label_schemas}
            for spec in specs:
                if spec.name not in existing:
                    label_schemas.create_label_schema(
                        spec.name, type=spec.type, title=spec.title or spec.name, instruction=spec.instruction,
                        input=_schema_input(spec, databricks=True), enable_comment=spec.enable_comment)
        return [spec.name for spec in specs]

    def sessions(self, experiment_id: str) -> list[Session]:
        mlflow.set_experiment(experiment_id=experiment_id)
        with _registry_uri_kept():
            return [self._session(s) for s in labeling.get_labeling_sessions()]

    def items(self, session: Session) -> list[Item]:
        with _registry_uri_kept():
            items = self._agents_client().list_items_in_labeling_session(session.handle)
        return [Item(i.source.trace_id, _DATABRICKS_STATUS.get(i.state, "pending"),
                     int(datetime.fromisoformat(i.create_time.replace("Z", "+00:00")).timestamp() * 1000))
                for i in items if i.source and i.source.trace_id]

    def create(self, experiment_id: str, name: str, reviewers: list[str], schemas: list[str]) -> Session:
        mlflow.set_experiment(experiment_id=experiment_id)
        with _registry_uri_kept():
            return self._session(labeling.create_labeling_session(name, assigned_users=reviewers,
                                                                  label_schemas=schemas))

    def add(self, session: Session, trace_ids: list[str]) -> None:
        experiment_id = session.handle.experiment_id
        # The traces are the experiment's own: the Review App reads only their id and location (it copies a
        # trace only from another experiment), so they are not downloaded with their spans.
        traces = [Trace(TraceInfo(trace_id=t, trace_location=TraceLocation.from_experiment_id(experiment_id),
                                  request_time=0, state=TraceState.OK), TraceData([])) for t in trace_ids]
        with _registry_uri_kept():
            session.handle.add_traces(traces)
