"""The scheduler's side of cascades: lock jobs awaiting review, hand them to the review with their
answers, and apply its verdicts (accept the best answer, or escalate to the next model).

One transaction per call: the jobs are locked ``FOR UPDATE SKIP LOCKED`` (so two schedulers never
judge the same job: the second skips it), judged while locked, and each verdict is applied with a
guarded transition (``WHERE status = 'reviewing'``). With a leader's term the transaction commits
only while that term still holds (``confirm_term``): a stale leader's verdicts are rolled back.
No other writer waits for these rows (workers, cancels and feedback touch other statuses), so
holding them through the judging cannot deadlock anything.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, null, select, update
from sqlalchemy.orm import Session

from scheduler.review import Answer, JobUnderReview, Verdict
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.leader import LeaderTerm, confirm_term
from scheduler.storage.tables import Batch, Job, JobAttempt, cascade_json, cascade_steps, prompt_text
from scheduler.storage.types import BatchStatus, JobStatus

JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[assignment]
# A job in a batch that has ended (cancelled, or past its completion window) is not escalated.
ENDED_BATCH_STATUSES = (BatchStatus.CANCELLING.value, BatchStatus.CANCELLED.value, BatchStatus.EXPIRED.value)

Decide = Callable[[Sequence[JobUnderReview]], Sequence[Verdict]]


@dataclass(frozen=True)
class ReviewCounts:
    accepted: int = 0
    escalated: int = 0

    @property
    def reviewed(self) -> int:
        return self.accepted + self.escalated


class ReviewStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def review(self, limit: int, now: dt.datetime, decide: Decide, term: LeaderTerm | None = None) -> ReviewCounts:
        """Lock up to ``limit`` jobs awaiting review (oldest first), pass them to ``decide`` with
        their answers, and apply its verdicts; returns how many were accepted and escalated."""
        with self.db.session() as session:
            jobs, attempts = _lock_reviewing(session, limit)
            if not jobs:
                return ReviewCounts()
            verdicts = decide(jobs)
            counts = _apply(session, verdicts, attempts, now)
            if term is not None and counts.reviewed:
                confirm_term(session, term, now)
        return counts

    def waiting(self) -> int:
        """Jobs awaiting review now."""
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Job)
                                      .where(Job.status == JobStatus.REVIEWING)) or 0)


def _lock_reviewing(session: Session, limit: int) -> tuple[list[JobUnderReview], dict[tuple[str, int], Any]]:
    rows = session.execute(
        select(Job.id, Job.prompt, Job.messages, Job.cascade, Job.cascade_allowed, Job.error, Batch.status)
        .outerjoin(Batch, Job.batch_id == Batch.id)
        .where(Job.status == JobStatus.REVIEWING).order_by(Job.created_at, Job.id).limit(limit)
        .with_for_update(skip_locked=True, of=Job.__table__)).all()
    if not rows:
        return [], {}
    found = session.execute(
        select(JobAttempt).where(JobAttempt.job_id.in_([row.id for row in rows]), JobAttempt.answer.is_not(None))
        .order_by(JobAttempt.job_id, JobAttempt.attempt)).scalars().all()
    answers: dict[str, list[Answer]] = {}
    by_key: dict[tuple[str, int], Any] = {}
    for attempt in found:
        answers.setdefault(attempt.job_id, []).append(Answer(attempt.attempt, attempt.model, attempt.answer or "",
                                                             attempt.decision, attempt.reason))
        by_key[(attempt.job_id, attempt.attempt)] = attempt
    jobs = [JobUnderReview(
        job_id=row.id, prompt_text=prompt_text(row.prompt, row.messages), answers=tuple(answers.get(row.id, ())),
        cascade=cascade_steps(row.cascade), cascade_allowed=row.cascade_allowed is not False,
        may_escalate=row.status not in ENDED_BATCH_STATUSES, note=row.error) for row in rows]
    return jobs, by_key


def _apply(session: Session, verdicts: Sequence[Verdict], attempts: dict[tuple[str, int], Any],
           now: dt.datetime) -> ReviewCounts:
    accepted = escalated = 0
    for verdict in verdicts:
        reviewing = (JOBS.c.id == verdict.job_id, JOBS.c.status == JobStatus.REVIEWING)
        if verdict.escalate_to is not None:
            # Back to the window with the next model pinned; max_attempts counts the new step's runs.
            moved = rows_affected(session.execute(update(JOBS).where(*reviewing).values(
                status=JobStatus.PENDING, escalate_to=verdict.escalate_to,
                cascade=cascade_json(verdict.cascade_rest) or null(), attempts_before_step=JOBS.c.attempts,
                assignment_reason=verdict.reason, dispatch_id=None, error=None, updated_at=now)))
            escalated += moved
        else:
            answer = attempts.get((verdict.job_id, verdict.accept)) if verdict.accept is not None else None
            result: dict[str, Any] = {}
            if answer is not None:
                result = {"result_text": answer.answer, "finish_reason": answer.finish_reason,
                          "input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens,
                          "latency_s": answer.latency_s, "assigned_model": answer.model,
                          "accepted_attempt": answer.attempt, "score": answer.score,
                          "score_source": answer.score_source, "scored_at": answer.scored_at}
            ending: dict[str, Any] = {"status": JobStatus.SUCCEEDED, "error": None} if answer is not None else {
                "status": JobStatus.FAILED, "error": f"nothing to accept: {verdict.reason}"}
            moved = rows_affected(session.execute(update(JOBS).where(*reviewing).values(
                escalate_to=None, cascade=null(), assignment_reason=verdict.reason, finished_at=now, updated_at=now,
                **ending, **result)))
            accepted += moved
        if not moved:
            continue   # reviewed by someone else meanwhile: its attempts are theirs to mark
        for item in verdict.attempts:
            values: dict[str, Any] = {"reviewed_at": now}
            if item.p_post is not None:
                values["p_post"] = item.p_post
            if verdict.judge is not None:
                values["judge"] = verdict.judge
            if item.ex_ante_p is not None:
                values["ex_ante_p"] = item.ex_ante_p
            if item.decision is not None:
                values["decision"] = item.decision
                values["reason"] = item.reason
            session.execute(update(ATTEMPTS).where(ATTEMPTS.c.job_id == verdict.job_id,
                                                   ATTEMPTS.c.attempt == item.attempt).values(**values))
    return ReviewCounts(accepted=accepted, escalated=escalated)
