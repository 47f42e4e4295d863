"""Workers' writes on real Postgres: a job runs under one claim and gets at most one result."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from scheduler.storage import Database, JobStatus, Outcome, ResultStore, WindowStore, utcnow
from scheduler.storage.tables import Job
from tests.integration.tickkit import submit

MODEL = "smollm2-135m"
OUTCOME = Outcome(text="Paris", finish_reason="stop", input_tokens=12, output_tokens=3, latency_s=0.2,
                  cost_usd=1e-6)


def queue(db: Database, job_id: str, dispatch_id: str = "d1", lease_s: float = 60, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status=JobStatus.QUEUED, assigned_model=MODEL, dispatch_id=dispatch_id,
            lease_expires_at=now + dt.timedelta(seconds=lease_s)))


def job_row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        return session.execute(select(Job).where(Job.id == job_id)).scalar_one()


def test_a_redelivered_message_neither_runs_nor_writes_twice(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    results = ResultStore(pg_db)

    first = results.claim(job_id, "d1", MODEL, "w1", now, run_lease_s=60)
    assert first is not None and first.attempts == 1
    assert results.claim(job_id, "d1", MODEL, "w2", now, run_lease_s=60) is None  # redelivered copy
    assert results.succeed(first, OUTCOME, now)
    assert not results.succeed(first, OUTCOME, now)  # a second write is refused
    row = job_row(pg_db, job_id)
    assert (row.status, row.result_text, row.output_tokens, row.worker) == (JobStatus.SUCCEEDED, "Paris", 3, "w1")


def test_claims_need_the_current_dispatch_and_model(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id, dispatch_id="new")
    results = ResultStore(pg_db)
    assert results.claim(job_id, "old", MODEL, "w", now, 60) is None          # stale message
    assert results.claim(job_id, "new", "gemma-3-270m", "w", now, 60) is None  # wrong model
    assert results.claim(job_id, "new", MODEL, "w", now, 60) is not None


def test_a_cancelled_job_is_skipped(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    assert ResultStore(pg_db).claim(job_id, "d1", MODEL, "w", now, 60) is None


def test_a_run_whose_lease_expired_cannot_write_over_the_retry(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    results = ResultStore(pg_db)
    slow = results.claim(job_id, "d1", MODEL, "slow-worker", now, run_lease_s=10)
    assert slow is not None
    later = now + dt.timedelta(seconds=11)
    assert WindowStore(pg_db).recover_expired_leases(later, max_attempts=3).requeued == 1
    queue(pg_db, job_id, dispatch_id="d2", now=later)
    retry = results.claim(job_id, "d2", MODEL, "fast-worker", later, run_lease_s=60)
    assert retry is not None and retry.attempts == 2
    assert results.succeed(retry, OUTCOME, later)
    assert not results.succeed(slow, OUTCOME, later)
    assert job_row(pg_db, job_id).worker == "fast-worker"


def test_failures_retry_then_fail_with_the_last_error(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    results = ResultStore(pg_db)
    for attempt, expected in [(1, JobStatus.PENDING), (2, JobStatus.FAILED)]:
        queue(pg_db, job_id, dispatch_id=f"d{attempt}")
        claimed = results.claim(job_id, f"d{attempt}", MODEL, "w", now, 60)
        assert claimed is not None and claimed.attempts == attempt
        assert results.fail(claimed, f"boom {attempt}", now, max_attempts=2) is expected
    row = job_row(pg_db, job_id)
    assert (row.status, row.error, row.attempts) == (JobStatus.FAILED, "boom 2", 2)
    assert row.finished_at is not None


def test_running_jobs_out_of_attempts_fail_when_their_lease_expires(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    assert ResultStore(pg_db).claim(job_id, "d1", MODEL, "w", now, run_lease_s=5) is not None
    recovery = WindowStore(pg_db).recover_expired_leases(now + dt.timedelta(seconds=6), max_attempts=1)
    assert (recovery.requeued, recovery.failed) == (0, 1)
    row = job_row(pg_db, job_id)
    assert row.status is JobStatus.FAILED and "lease expired" in (row.error or "")


def test_a_job_with_a_reference_is_graded_when_its_result_is_written(pg_db: Database) -> None:
    from scheduler.jobspec import JobSpec
    from scheduler.storage import JobStore

    now = utcnow()
    job, _ = JobStore(pg_db).submit_job("default", JobSpec(prompt="Capital of France?", reference="Paris"), now)
    queue(pg_db, job.id)
    results = ResultStore(pg_db)
    claimed = results.claim(job.id, "d1", MODEL, "w", now, 60)
    assert claimed is not None and claimed.grader == "contains"
    assert results.succeed(claimed, OUTCOME, now)
    row = job_row(pg_db, job.id)
    assert (row.score, row.score_source) == (1.0, "grader")
