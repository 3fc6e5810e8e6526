"""A PostgreSQL tracking store (a real server from the pgserver wheel) read directly, as MLflow returns it."""

from __future__ import annotations

import mlflow
import pgserver
import pytest
from mlflow.entities import AssessmentSource, AssessmentSourceType

from assets.traces.extract import extract_traces
from resources.agent.traffic import seed_demo
from resources.api_trace_source import ApiTrackingStore
from resources.trace_sources import SqlTrackingStore, source_for
from tests.conftest import HOSTILE_TAGS, Store
from tests.test_api_source import assert_same, contract_dump
from tests.test_extract import assert_matches_mlflow


@pytest.fixture(scope="module")
def postgres_store(tmp_path_factory) -> Store:
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    server.psql("CREATE DATABASE mlflow;")
    uri = server.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    mlflow.set_tracking_uri(uri)
    summary = seed_demo(25, experiment="llmops-demo", seed=5)
    for key, value in HOSTILE_TAGS.items():
        mlflow.set_trace_tag(summary.trace_ids[0], key, value)
    yield Store(uri, summary.experiment_id, summary.trace_ids)
    server.cleanup()


def test_postgres_store_is_read_directly_and_equals_mlflow(postgres_store: Store, tmp_path):
    source = source_for(postgres_store.uri)
    assert isinstance(source, SqlTrackingStore)
    direct, via_api = str(tmp_path / "direct.duckdb"), str(tmp_path / "api.duckdb")
    assert extract_traces(source, direct).source_traces == len(postgres_store.trace_ids)
    assert_matches_mlflow(postgres_store, direct)
    extract_traces(ApiTrackingStore(postgres_store.uri), via_api)
    assert_same(contract_dump(direct), contract_dump(via_api))

    mlflow.set_tracking_uri(postgres_store.uri)
    mlflow.log_feedback(trace_id=postgres_store.trace_ids[3], name="user_thumbs", value=False, rationale="late",
                        source=AssessmentSource(AssessmentSourceType.HUMAN, "late-user"))
    mlflow.set_trace_tag(postgres_store.trace_ids[4], "escalated", "yes")
    again = extract_traces(source_for(postgres_store.uri), direct)
    assert (again.mode, again.changed_traces) == ("incremental", 2)
    assert_matches_mlflow(postgres_store, direct)
