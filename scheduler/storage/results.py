"""The workers' side of the store: claim queued jobs, write each outcome exactly once.

Every write is a guarded status transition. A worker may run a job only if the job is still
``queued`` under the dispatch its message carries; it may write the outcome only while the job
is ``running`` under the run token it got when claiming. A redelivered or stale message, a
cancelled job, or a job whose lease expired and was handed to another worker therefore never
gets a second result.

A micro-batch is claimed in one statement and its outcomes are written in as few transactions
as the worker chooses (``record``), because per-job round trips dominated the system's overhead.
"""
from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, update
from sqlalchemy.orm import Session

from scheduler.grading import Grader, grade
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.tables import Job
from scheduler.storage.types import JobStatus

JOBS: Table = Job.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    run_token: str
    attempts: int
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int
    temperature: float
    stop: list[str]
    reference: str | None = None
    grader: str | None = None


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float


@dataclass(frozen=True)
class Failure:
    error: str
    retry: bool = True      # False: the job cannot succeed as submitted; fail it now


class ResultStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_batch(self, job_ids: Sequence[str], dispatch_id: str, model: str, worker: str, now: dt.datetime,
                    run_lease_s: float) -> list[ClaimedJob]:
        """queued -> running for every job still ours (in ``job_ids`` order); the rest are skipped."""
        token = str(uuid.uuid4())
        with self.db.session() as session:
            rows = session.execute(
                update(JOBS).where(JOBS.c.id.in_(list(job_ids)), JOBS.c.status == JobStatus.QUEUED,
                                   JOBS.c.dispatch_id == dispatch_id, JOBS.c.assigned_model == model)
                .values(status=JobStatus.RUNNING, run_token=token, attempts=JOBS.c.attempts + 1,
                        worker=worker, started_at=now, updated_at=now,
                        lease_expires_at=now + dt.timedelta(seconds=run_lease_s))
                .returning(JOBS.c.id, JOBS.c.attempts, JOBS.c.prompt, JOBS.c.messages, JOBS.c.max_tokens,
                           JOBS.c.temperature, JOBS.c.stop, JOBS.c.reference, JOBS.c.grader)).all()
        by_id = {row.id: ClaimedJob(id=row.id, run_token=token, attempts=row.attempts, prompt=row.prompt,
                                    messages=row.messages, max_tokens=row.max_tokens, temperature=row.temperature,
                                    stop=list(row.stop or []), reference=row.reference, grader=row.grader)
                 for row in rows}
        return [by_id[job_id] for job_id in job_ids if job_id in by_id]

    def claim(self, job_id: str, dispatch_id: str, model: str, worker: str, now: dt.datetime,
              run_lease_s: float) -> ClaimedJob | None:
        claimed = self.claim_batch([job_id], dispatch_id, model, worker, now, run_lease_s)
        return claimed[0] if claimed else None

    def extend_leases(self, run_tokens: list[str], until: dt.datetime) -> int:
        """Keep running jobs' leases alive while their worker is alive and within its timeout."""
        if not run_tokens:
            return 0
        with self.db.session() as session:
            return rows_affected(session.execute(
                update(JOBS).where(JOBS.c.run_token.in_(run_tokens), JOBS.c.status == JobStatus.RUNNING)
                .values(lease_expires_at=until)))

    def record(self, results: Sequence[tuple[ClaimedJob, Outcome | Failure]], now: dt.datetime,
               max_attempts: int) -> list[JobStatus | None]:
        """Write several outcomes in one transaction. Per job: the status written, or None when
        this run no longer owns the job (nothing written for it)."""
        with self.db.session() as session:
            return [self._record_one(session, job, result, now, max_attempts) for job, result in results]

    def succeed(self, job: ClaimedJob, outcome: Outcome, now: dt.datetime) -> bool:
        return self.record([(job, outcome)], now, max_attempts=1)[0] is JobStatus.SUCCEEDED

    def fail(self, job: ClaimedJob, error: str, now: dt.datetime, max_attempts: int) -> JobStatus | None:
        """A failed run: back to pending while attempts remain, else failed with the error."""
        return self.record([(job, Failure(error))], now, max_attempts)[0]

    def release(self, job: ClaimedJob, now: dt.datetime) -> bool:
        """Give an unfinished job back (worker shutting down): pending again, attempt not counted."""
        with self.db.session() as session:
            return _guarded(session, job, now, status=JobStatus.PENDING, attempts=job.attempts - 1,
                            dispatch_id=None, error="released by a stopping worker")

    @staticmethod
    def _record_one(session: Session, job: ClaimedJob, result: Outcome | Failure, now: dt.datetime,
                    max_attempts: int) -> JobStatus | None:
        if isinstance(result, Failure):
            final = not result.retry or job.attempts >= max_attempts
            status = JobStatus.FAILED if final else JobStatus.PENDING
            extra: dict[str, Any] = {"finished_at": now} if final else {"dispatch_id": None}
            written = _guarded(session, job, now, status=status, error=result.error[:4000], **extra)
            return status if written else None
        label: dict[str, Any] = {}
        if job.reference is not None:
            # Graded where the result is written, so the label lands with it.
            label = {"score": grade(result.text, job.reference, Grader(job.grader or Grader.CONTAINS.value)),
                     "score_source": "grader", "scored_at": now}
        written = _guarded(session, job, now, status=JobStatus.SUCCEEDED, result_text=result.text,
                           finish_reason=result.finish_reason, input_tokens=result.input_tokens,
                           output_tokens=result.output_tokens, latency_s=result.latency_s,
                           cost_usd=result.cost_usd, error=None, finished_at=now, **label)
        return JobStatus.SUCCEEDED if written else None


def _guarded(session: Session, job: ClaimedJob, now: dt.datetime, **values: Any) -> bool:
    """running -> anything, only under this run's token."""
    # A Core UPDATE on the table: the ORM-enabled form re-synchronises the session on every
    # statement, which cost more than the database round trip itself.
    return bool(rows_affected(session.execute(
        update(JOBS).where(JOBS.c.id == job.id, JOBS.c.status == JobStatus.RUNNING, JOBS.c.run_token == job.run_token)
        .values(updated_at=now, lease_expires_at=None, run_token=None, **values))))
