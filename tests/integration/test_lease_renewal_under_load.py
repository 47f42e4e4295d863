"""A worker's lease renewal running while its runner writes results: no deadlock, ever.

A worker process renews the leases of the jobs it holds (the heartbeat thread) while its runner
claims micro-batches and writes their results: both touch the same rows. When renewal locked
rows in table order and writes locked them in micro-batch order, the two deadlocked under load
and a whole micro-batch was retried. Here several worker processes, shaped like production's
(one runner, one renewal thread), each run many 32-job micro-batches on the echo backend
(instant answers, so the database is the only work) while renewing every few milliseconds, all
on real Postgres.
"""
from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.queues import Queue

import psycopg
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from scheduler.fleet import BackendKind, ModelSpec
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.storage import Database, JobStatus, JobStore, ResultStore, utcnow
from scheduler.storage.tables import Job
from workers.backends.echo import EchoBackend
from workers.inflight import InFlight
from workers.runner import BatchRunner

MODEL = "echo"
WORKERS = 4
BATCHES_PER_WORKER = 20
BATCH_JOBS = 32
RENEW_EVERY_S = 0.002
RUN_LEASE_S = 600.0
# Generous: the run takes seconds. Deadlocks cost a second each (Postgres' deadlock_timeout).
RUN_LIMIT_S = 45.0
LOCK_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@dataclass
class WorkerReport:
    succeeded: int = 0
    renewals: int = 0
    leases_renewed: int = 0
    renewal_conflicts: int = 0      # deadlocks / serialization failures
    write_conflicts: int = 0        # raised by a claim or write, or turned into a job's failure
    other_errors: list[str] = field(default_factory=list)


class _RefusalLog(logging.Handler):
    """The store turns a row's refused write into that job's failure and logs it: count those."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def queue_micro_batches(db: Database, count: int) -> list[tuple[str, list[str]]]:
    """``count`` micro-batches of pending jobs, queued for MODEL: (dispatch id, job ids)."""
    now = utcnow()
    specs = [JobSpec(prompt=f"question {i} of the load test") for i in range(count * BATCH_JOBS)]
    _batch, job_ids, _ = JobStore(db).submit_batch("default", BatchSpec(jobs=specs), now)
    # A dispatch lists its jobs in the plan's order, which has nothing to do with where the rows
    # lie in the table.
    random.Random(7).shuffle(job_ids)
    batches = [(f"dispatch-{n}", job_ids[n * BATCH_JOBS:(n + 1) * BATCH_JOBS]) for n in range(count)]
    with db.session() as session:
        for dispatch_id, batch_job_ids in batches:
            session.execute(update(Job).where(Job.id.in_(batch_job_ids)).values(
                status=JobStatus.QUEUED, assigned_model=MODEL, dispatch_id=dispatch_id, queued_at=now))
    return batches


def is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and isinstance(exc.orig, LOCK_CONFLICTS)


def worker_process(database_url: str, batches: list[tuple[str, list[str]]], reports: Queue[WorkerReport]) -> None:
    """One worker process: a runner working through ``batches`` and a thread renewing its leases."""
    refusals = _RefusalLog()
    logging.getLogger("scheduler.storage.results").addHandler(refusals)
    db = Database(database_url, pre_ping=False)  # as a worker opens it (workers/tasks.py)
    results, in_flight, report = ResultStore(db), InFlight(), WorkerReport()
    spec = ModelSpec(name=MODEL, backend=BackendKind.ECHO, weights="none", usd_per_second=0.0,
                     max_batch_jobs=BATCH_JOBS)
    runner = BatchRunner(results, EchoBackend(spec), spec, f"load-test-{batches[0][0]}", RUN_LEASE_S,
                         max_attempts=3, clock=utcnow, in_flight=in_flight)
    done = threading.Event()

    def renew() -> None:
        # What the heartbeat does each beat (workers/heartbeat.py), at a far higher rate than
        # production's (seconds), so that a renewal nearly always overlaps some result write.
        while not done.is_set():
            try:
                report.leases_renewed += results.extend_leases(
                    in_flight.renewable(), utcnow() + dt.timedelta(seconds=RUN_LEASE_S))
                report.renewals += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported to the test
                if is_lock_conflict(exc):
                    report.renewal_conflicts += 1
                else:
                    report.other_errors.append(repr(exc))
            done.wait(RENEW_EVERY_S)

    renewer = threading.Thread(target=renew, name="renewer")
    renewer.start()
    try:
        for dispatch_id, job_ids in batches:
            try:
                report.succeeded += runner.run(dispatch_id, job_ids).succeeded
            except Exception as exc:  # noqa: BLE001 - counted and reported to the test
                if is_lock_conflict(exc):
                    report.write_conflicts += 1
                else:
                    report.other_errors.append(repr(exc))
    finally:
        done.set()
        renewer.join()
        db.dispose()
    report.write_conflicts += sum("DeadlockDetected" in message or "SerializationFailure" in message
                                  for message in refusals.messages)
    report.other_errors += [message for message in refusals.messages if "refused" in message]
    reports.put(report)


def test_lease_renewal_and_result_writes_never_deadlock(pg_db: Database) -> None:
    batches = queue_micro_batches(pg_db, WORKERS * BATCHES_PER_WORKER)
    # Forked like Celery's prefork pool; each child opens its own connections.
    context = multiprocessing.get_context("fork")
    reports: Queue[WorkerReport] = context.Queue()
    pg_db.dispose()
    workers = [context.Process(target=worker_process, args=(pg_db.url, batches[index::WORKERS], reports))
               for index in range(WORKERS)]
    started = time.monotonic()
    for process in workers:
        process.start()
    try:
        finished = [reports.get(timeout=max(0.1, started + RUN_LIMIT_S - time.monotonic())) for _ in workers]
    except queue.Empty:
        pytest.fail(f"the workers did not finish within {RUN_LIMIT_S:.0f}s (each deadlock costs a second)")
    finally:
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    elapsed_s = time.monotonic() - started

    jobs = WORKERS * BATCHES_PER_WORKER * BATCH_JOBS
    renewals = sum(report.renewals for report in finished)
    renewal_conflicts = sum(report.renewal_conflicts for report in finished)
    write_conflicts = sum(report.write_conflicts for report in finished)
    other_errors = [error for report in finished for error in report.other_errors]
    print(f"\n{WORKERS} workers x {BATCHES_PER_WORKER} micro-batches x {BATCH_JOBS} jobs = {jobs} jobs in "
          f"{elapsed_s:.1f}s; {renewals} renewals ({renewals / WORKERS / elapsed_s:.0f}/s per worker, "
          f"{sum(report.leases_renewed for report in finished)} leases); deadlocks or serialization failures: "
          f"{renewal_conflicts} in renewals, {write_conflicts} in claims/writes; {len(other_errors)} other errors")
    assert (renewal_conflicts, write_conflicts) == (0, 0)
    assert other_errors == []
    assert renewals > 0

    # Every job has exactly one result: written once, by its first and only run.
    assert sum(report.succeeded for report in finished) == jobs
    with pg_db.session() as session:
        rows = session.execute(select(Job.status, Job.attempts, Job.prompt, Job.result_text, Job.run_token)).all()
    assert len(rows) == jobs
    assert all(row.status is JobStatus.SUCCEEDED and row.attempts == 1 and row.result_text == row.prompt
               and row.run_token is None for row in rows)
