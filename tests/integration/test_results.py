"""Workers' writes on real Postgres: a job runs under one claim, gets at most one result, and one
job's outcome never fails another's."""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select, update

from scheduler.storage import (
    ClaimedJob,
    Database,
    Failure,
    JobStatus,
    Outcome,
    ResultStore,
    WindowStore,
    utcnow,
)
from scheduler.storage.tables import Job
from tests.integration.tickkit import submit

MODEL = "smollm2-135m"
MAX_ATTEMPTS = 3
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

    [first] = results.claim_batch([job_id], "d1", MODEL, "w1", now, run_lease_s=60)
    assert first.attempts == 1
    assert results.claim_batch([job_id], "d1", MODEL, "w2", now, run_lease_s=60) == []  # redelivered copy
    assert results.record([(first, OUTCOME)], now, MAX_ATTEMPTS) == [JobStatus.SUCCEEDED]
    assert results.record([(first, OUTCOME)], now, MAX_ATTEMPTS) == [None]  # a second write is refused
    row = job_row(pg_db, job_id)
    assert (row.status, row.result_text, row.output_tokens, row.worker) == (JobStatus.SUCCEEDED, "Paris", 3, "w1")


def test_claims_need_the_current_dispatch_and_model(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id, dispatch_id="new")
    results = ResultStore(pg_db)
    assert results.claim_batch([job_id], "old", MODEL, "w", now, 60) == []          # stale message
    assert results.claim_batch([job_id], "new", "gemma-3-270m", "w", now, 60) == []  # wrong model
    assert [job.id for job in results.claim_batch([job_id], "new", MODEL, "w", now, 60)] == [job_id]


def test_a_cancelled_job_is_skipped(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    assert ResultStore(pg_db).claim_batch([job_id], "d1", MODEL, "w", now, 60) == []


def test_a_run_whose_lease_expired_cannot_write_over_the_retry(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    results = ResultStore(pg_db)
    [slow] = results.claim_batch([job_id], "d1", MODEL, "slow-worker", now, run_lease_s=10)
    later = now + dt.timedelta(seconds=11)
    assert WindowStore(pg_db).recover_expired_leases(later, max_attempts=3).requeued == 1
    queue(pg_db, job_id, dispatch_id="d2", now=later)
    [retry] = results.claim_batch([job_id], "d2", MODEL, "fast-worker", later, run_lease_s=60)
    assert retry.attempts == 2
    assert results.record([(retry, OUTCOME)], later, MAX_ATTEMPTS) == [JobStatus.SUCCEEDED]
    assert results.record([(slow, OUTCOME)], later, MAX_ATTEMPTS) == [None]
    assert job_row(pg_db, job_id).worker == "fast-worker"


def test_failures_retry_then_fail_with_the_last_error(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    results = ResultStore(pg_db)
    for attempt, expected in [(1, JobStatus.PENDING), (2, JobStatus.FAILED)]:
        queue(pg_db, job_id, dispatch_id=f"d{attempt}")
        [claimed] = results.claim_batch([job_id], f"d{attempt}", MODEL, "w", now, 60)
        assert claimed.attempts == attempt
        assert results.record([(claimed, Failure(f"boom {attempt}"))], now, max_attempts=2) == [expected]
    row = job_row(pg_db, job_id)
    assert (row.status, row.error, row.attempts) == (JobStatus.FAILED, "boom 2", 2)
    assert row.finished_at is not None


def test_running_jobs_out_of_attempts_fail_when_their_lease_expires(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    queue(pg_db, job_id)
    assert ResultStore(pg_db).claim_batch([job_id], "d1", MODEL, "w", now, run_lease_s=5) != []
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
    [claimed] = results.claim_batch([job.id], "d1", MODEL, "w", now, 60)
    assert claimed.grader == "contains"
    assert results.record([(claimed, OUTCOME)], now, MAX_ATTEMPTS) == [JobStatus.SUCCEEDED]
    row = job_row(pg_db, job.id)
    assert (row.score, row.score_source) == (1.0, "grader")


# -- one job's outcome never fails another's ------------------------------------------------------

def claimed_jobs(db: Database, count: int, now: dt.datetime) -> list[ClaimedJob]:
    job_ids = submit(db, count, now)
    for job_id in job_ids:
        queue(db, job_id)
    claimed = ResultStore(db).claim_batch(job_ids, "d1", MODEL, "w", now, 60)
    assert [job.id for job in claimed] == job_ids
    return claimed


def outcome(text: str = "Paris", **changes: Any) -> Outcome:
    return dataclasses.replace(OUTCOME, text=text, **changes)


def test_an_output_with_nul_characters_is_stored_cleaned_and_its_neighbours_commit(pg_db: Database) -> None:
    now = utcnow()
    first, bad, last = claimed_jobs(pg_db, 3, now)
    statuses = ResultStore(pg_db).record([(first, outcome("one")), (bad, outcome("Pa\x00ris\x00")),
                                          (last, outcome("three"))], now, MAX_ATTEMPTS)
    assert statuses == [JobStatus.SUCCEEDED] * 3
    row = job_row(pg_db, bad.id)
    assert row.result_text == "Pa\ufffdris\ufffd"
    assert row.notes == "attempt 1: output held 2 NUL characters; replaced with U+FFFD"
    assert [(job_row(pg_db, job.id).result_text, job_row(pg_db, job.id).notes) for job in (first, last)] == [
        ("one", None), ("three", None)]


def test_surrogates_are_joined_when_paired_and_replaced_when_alone(pg_db: Database) -> None:
    now = utcnow()
    [job] = claimed_jobs(pg_db, 1, now)
    # A smiley as a UTF-16 pair of code points, then half of a pair (e.g. a surrogateescape'd byte).
    assert ResultStore(pg_db).record([(job, outcome("ok \ud83d\ude00 \udc80"))], now, MAX_ATTEMPTS) == [
        JobStatus.SUCCEEDED]
    row = job_row(pg_db, job.id)
    assert row.result_text == "ok \U0001f600 \ufffd"
    assert row.notes == ("attempt 1: output held 1 unpaired surrogate; replaced with U+FFFD; "
                         "1 surrogate pair split into two code points; joined")


def test_an_error_text_the_database_cannot_hold_is_stored_cleaned(pg_db: Database) -> None:
    now = utcnow()
    [job] = claimed_jobs(pg_db, 1, now)
    failure = Failure("engine said \x00\ud800", retry=False)
    assert ResultStore(pg_db).record([(job, failure)], now, MAX_ATTEMPTS) == [JobStatus.FAILED]
    row = job_row(pg_db, job.id)
    assert row.error == "engine said \ufffd\ufffd"
    assert row.notes == "attempt 1: error held 1 NUL character and 1 unpaired surrogate; replaced with U+FFFD"


def test_notes_of_earlier_attempts_are_kept(pg_db: Database) -> None:
    now = utcnow()
    [job_id] = submit(pg_db, 1, now)
    results = ResultStore(pg_db)
    for attempt, result in [(1, Failure("lost \x00")), (2, outcome("fine\x00"))]:
        queue(pg_db, job_id, dispatch_id=f"d{attempt}")
        [claimed] = results.claim_batch([job_id], f"d{attempt}", MODEL, "w", now, 60)
        results.record([(claimed, result)], now, MAX_ATTEMPTS)
    assert job_row(pg_db, job_id).notes == ("attempt 1: error held 1 NUL character; replaced with U+FFFD\n"
                                            "attempt 2: output held 1 NUL character; replaced with U+FFFD")


def test_a_row_the_database_refuses_fails_that_job_alone_without_retry(pg_db: Database) -> None:
    now = utcnow()
    too_long, too_big, fine = claimed_jobs(pg_db, 3, now)
    statuses = ResultStore(pg_db).record([
        (too_long, outcome(finish_reason="a reason longer than the column")),  # varchar(16)
        (too_big, outcome(output_tokens=2**40)),                                # integer
        (fine, outcome()),
    ], now, MAX_ATTEMPTS)
    # Refused values would be refused again: failed at the first attempt, not retried.
    assert statuses == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.SUCCEEDED]
    assert job_row(pg_db, too_long.id).error == (
        "the outcome could not be stored: StringDataRightTruncation: value too long for type character varying(16)")
    assert job_row(pg_db, too_big.id).error == (
        "the outcome could not be stored: NumericValueOutOfRange: integer out of range")
    assert job_row(pg_db, fine.id).result_text == "Paris"


def test_a_row_held_elsewhere_past_the_lock_timeout_is_left_to_its_lease_and_the_rest_commit(
        pg_db: Database) -> None:
    now = utcnow()
    first, held, last = claimed_jobs(pg_db, 3, now)
    impatient = Database(f"{pg_db.url}?options=-c%20lock_timeout%3D200")
    try:
        with pg_db.engine.connect() as other, other.begin():
            other.execute(select(Job.id).where(Job.id == held.id).with_for_update())
            statuses = ResultStore(impatient).record([(job, outcome()) for job in (first, held, last)], now,
                                                     MAX_ATTEMPTS)
    finally:
        impatient.dispose()
    # Neither the outcome nor a failure could be written for the held job: it keeps its run (and
    # lease), so the tick retries it if the lease runs out; its neighbours are stored.
    assert statuses == [JobStatus.SUCCEEDED, None, JobStatus.SUCCEEDED]
    row = job_row(pg_db, held.id)
    assert (row.status, row.run_token, row.error) == (JobStatus.RUNNING, held.run_token, None)
    assert job_row(pg_db, last.id).result_text == "Paris"


# -- row locks: renewal never waits, claims wait in id order --------------------------------------

def test_lease_renewal_skips_a_row_being_written_instead_of_waiting_for_it(pg_db: Database) -> None:
    now = utcnow()
    being_written, idle = claimed_jobs(pg_db, 2, now)
    # A renewal that waited for the lock would fail on this timeout instead of returning.
    impatient = Database(f"{pg_db.url}?options=-c%20lock_timeout%3D2000")
    until = now + dt.timedelta(seconds=600)
    try:
        with pg_db.engine.connect() as writer, writer.begin():
            writer.execute(update(Job).where(Job.id == being_written.id).values(finish_reason="stop"))
            assert ResultStore(impatient).extend_leases([being_written.run_token, idle.run_token], until) == 1
        assert job_row(pg_db, idle.id).lease_expires_at == until
        assert job_row(pg_db, being_written.id).lease_expires_at != until
        assert ResultStore(impatient).extend_leases([being_written.run_token, idle.run_token], until) == 2
    finally:
        impatient.dispose()


def test_a_claim_waits_for_a_row_being_changed_and_checks_it_again(pg_db: Database) -> None:
    now = utcnow()
    cancelled, claimable = job_ids = submit(pg_db, 2, now)
    for job_id in job_ids:
        queue(pg_db, job_id)
    with ThreadPoolExecutor(max_workers=1) as pool, pg_db.engine.connect() as canceller:
        with canceller.begin():
            canceller.execute(update(Job).where(Job.id == cancelled).values(status=JobStatus.CANCELLED))
            claim = pool.submit(ResultStore(pg_db).claim_batch, job_ids, "d1", MODEL, "w", now, 60)
            time.sleep(0.3)
            assert not claim.done()  # waiting for the cancelling transaction's row lock
        assert [job.id for job in claim.result(timeout=10)] == [claimable]
    assert job_row(pg_db, cancelled).status is JobStatus.CANCELLED


def test_the_embedded_default_on_sqlite_claims_renews_and_isolates_writes_the_same_way(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        now = utcnow()
        fine, odd, refused = claimed_jobs(db, 3, now)
        results = ResultStore(db)
        # One run token for the whole claimed micro-batch.
        assert results.extend_leases([fine.run_token], now + dt.timedelta(seconds=600)) == 3
        statuses = results.record([(fine, outcome()), (odd, outcome("NUL \x00 and half \ud800")),
                                   (refused, outcome(output_tokens=2**70))], now, MAX_ATTEMPTS)
        assert statuses == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED]
        assert [job_row(db, job.id).result_text for job in (fine, odd)] == ["Paris", "NUL \ufffd and half \ufffd"]
        assert job_row(db, refused.id).error == (
            "the outcome could not be stored: OverflowError: Python int too large to convert to SQLite INTEGER")
    finally:
        db.dispose()
