"""The migrations build exactly the tables the models describe, on Postgres and on SQLite."""
from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from scheduler.storage.migrate import alembic_config, upgrade_database
from scheduler.storage.tables import Base
from tests.conftest import create_postgres_database, drop_postgres_database

EXPECTED_TABLES = {"alembic_version", "api_keys", "batches", "decisions", "files", "jobs", "leadership", "models",
                   "tenants", "ticks", "worker_heartbeats"}


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path) -> object:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def test_upgrade_from_empty_to_head_matches_models(empty_database_url: str) -> None:
    assert _tables(empty_database_url) == set()
    upgrade_database(empty_database_url)
    assert _tables(empty_database_url) == EXPECTED_TABLES
    assert _differences(empty_database_url) == []


def test_downgrade_to_base_and_upgrade_again(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)
    command.downgrade(alembic_config(empty_database_url), "base")
    assert _tables(empty_database_url) == {"alembic_version"}
    upgrade_database(empty_database_url)
    assert _differences(empty_database_url) == []


def test_batches_that_had_ended_before_0004_are_completed(empty_database_url: str) -> None:
    upgrade_database(empty_database_url, "0003")
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            for batch, status in (("done", "succeeded"), ("running", "pending")):
                conn.execute(text("INSERT INTO batches (id, owner, num_jobs, request_hash, created_at) "
                                  "VALUES (:id, 't', 1, 'x', CURRENT_TIMESTAMP)"), {"id": batch})
                conn.execute(text("INSERT INTO jobs (id, batch_id, owner, status, prompt, max_tokens, temperature, "
                                  "request_hash, attempts, created_at, updated_at) VALUES (:id, :batch, 't', :status, "
                                  "'p', 8, 0, 'x', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                             {"id": f"job-{batch}", "batch": batch, "status": status})
        upgrade_database(empty_database_url)
        with engine.connect() as conn:
            statuses = dict(conn.execute(text("SELECT id, status FROM batches")).all())
    finally:
        engine.dispose()
    assert statuses == {"done": "completed", "running": "in_progress"}
