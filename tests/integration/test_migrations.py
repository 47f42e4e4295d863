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

EXPECTED_TABLES = {"alembic_version", "api_keys", "batches", "decisions", "files", "job_attempts", "jobs", "leadership",
                   "models", "tenants", "ticks", "worker_heartbeats"}


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


def test_jobs_that_succeeded_before_0005_keep_their_answer_as_one_accepted_attempt(empty_database_url: str) -> None:
    upgrade_database(empty_database_url, "0004")
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            for job, status, result in (("done", "succeeded", "Paris"), ("waiting", "pending", None)):
                conn.execute(text(
                    "INSERT INTO jobs (id, owner, status, prompt, max_tokens, temperature, request_hash, attempts,"
                    " created_at, updated_at, assigned_model, result_text, cost_usd, predicted_quality, score,"
                    " score_source, scored_at) VALUES (:id, 't', :status, 'p', 8, 0, 'x', 2, CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP, 'm', :result, 0.5, 0.4, 1.0, 'grader', CURRENT_TIMESTAMP)"),
                    {"id": job, "status": status, "result": result})
        upgrade_database(empty_database_url)
        with engine.connect() as conn:
            attempts = conn.execute(text("SELECT job_id, attempt, model, answer, cost_usd, ex_ante_p, decision, score"
                                         " FROM job_attempts")).all()
            accepted = dict(conn.execute(text("SELECT id, accepted_attempt FROM jobs")).all())
            allowed = set(conn.execute(text("SELECT cascade_allowed FROM jobs")).scalars())
    finally:
        engine.dispose()
    assert [tuple(row) for row in attempts] == [("done", 2, "m", "Paris", 0.5, 0.4, "accepted", 1.0)]
    assert accepted == {"done": 2, "waiting": None}
    assert allowed == {True}


def test_0005_downgrades_to_0004_and_upgrades_again_keeping_answers(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)
    engine = create_engine(empty_database_url)
    insert_job = ("INSERT INTO jobs (id, owner, status, prompt, max_tokens, temperature, request_hash, attempts,"
                  " created_at, updated_at, assigned_model, result_text, cost_usd) VALUES (:id, 't', :status, 'p', 8,"
                  " 0, 'x', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'm', :result, 0.25)")
    try:
        with engine.begin() as conn:
            conn.execute(text(insert_job), {"id": "done", "status": "succeeded", "result": "Paris"})
            conn.execute(text(insert_job), {"id": "judging", "status": "reviewing", "result": None})
            conn.execute(text("INSERT INTO job_attempts (job_id, attempt, model, answer, cost_usd, created_at)"
                              " VALUES ('judging', 1, 'm', 'Lyon', 0.25, CURRENT_TIMESTAMP)"))
        command.downgrade(alembic_config(empty_database_url), "0004")
        assert "job_attempts" not in _tables(empty_database_url)
        with engine.connect() as conn:
            jobs = {row.id: (row.status, row.error) for row in conn.execute(text("SELECT id, status, error FROM jobs"))}
            columns = {column["name"] for column in inspect(conn).get_columns("jobs")}
        # Older code knows no 'reviewing': that job ends, saying why; the succeeded one keeps its answer.
        assert jobs == {"done": ("succeeded", None),
                        "judging": ("failed", "awaiting the review of its answer when Switchyard was downgraded")}
        assert not columns & {"cascade", "cascade_allowed", "escalate_to", "attempts_before_step", "accepted_attempt"}
        upgrade_database(empty_database_url)
        with engine.connect() as conn:
            attempts = conn.execute(text("SELECT job_id, attempt, answer, cost_usd, decision FROM job_attempts")).all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in attempts] == [("done", 1, "Paris", 0.25, "accepted")]
    assert _differences(empty_database_url) == []
