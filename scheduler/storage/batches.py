"""Batches as the API shows them (a summary of their jobs), cancelling them, and the transitions
of their lifecycle that the scheduler drives (``scheduler/batch_lifecycle.py``).

Every transition is a guarded UPDATE (``WHERE status = <what it was>``) or runs under the batch
row's lock with its status checked again, so two schedulers (or a scheduler and the API) never
both move a batch, and a batch's files are written exactly once. Job rows several at a time are
locked in id order, as everywhere else (``scheduler/storage/results.py``), so these writes cannot
deadlock with workers' claims.

Reads take a ``scope``: the tenant whose batches the caller may see, or None for every tenant's.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, true, update
from sqlalchemy.orm import Session

from scheduler.errors import Conflict, InvalidRequest, NotFound
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.files import new_file
from scheduler.storage.tables import Batch, Job
from scheduler.storage.types import CANCELLABLE_STATUSES, FINAL_STATUSES, BatchStatus, JobStatus

CANCELLABLE_BATCH_STATUSES = (BatchStatus.VALIDATING.value, BatchStatus.IN_PROGRESS.value)
OUTPUT_PURPOSE = "batch_output"
# Rows of a finishing batch's jobs read at a time (a batch may hold 50,000).
FINISH_READ_CHUNK = 1000
CANCELLED_ERROR = "the batch was cancelled before this request ran"
EXPIRED_ERROR = "the batch's completion window ended before this request ran"
# The jobs whose plan's promise stands: dispatched by an earlier tick (queued, running, being
# reviewed, answered or failed after it ran). A job back from a cascade's review (pending with
# ``escalate_to``) counts too; a cancelled or expired one does not.
SETTLED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.REVIEWING, JobStatus.SUCCEEDED,
                    JobStatus.FAILED)
# Files of a finished batch: (output file content, error file content); None when empty.
RenderFiles = Callable[[Iterable[Job]], tuple[bytes | None, bytes | None]]


@dataclass(frozen=True)
class BatchSummary:
    batch: Batch
    counts: dict[str, int]      # job status -> number of jobs
    cost_usd: float             # spent so far on finished jobs
    input_tokens: int
    output_tokens: int

    @classmethod
    def created(cls, batch: Batch) -> BatchSummary:
        """A batch as its submit wrote it: every job pending, nothing spent (no read needed)."""
        return cls(batch, counts={JobStatus.PENDING.value: batch.num_jobs} if batch.num_jobs else {},
                   cost_usd=0.0, input_tokens=0, output_tokens=0)

    @property
    def finished_jobs(self) -> int:
        return sum(n for status, n in self.counts.items() if JobStatus(status).is_final)

    @property
    def done(self) -> bool:
        """Every job is final (the batch's own status may still be finishing)."""
        return self.finished_jobs == self.batch.num_jobs


@dataclass(frozen=True)
class BatchPage:
    batches: list[BatchSummary]
    has_more: bool


class BatchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- read -----------------------------------------------------------------------------
    def get(self, scope: str | None, batch_id: str) -> BatchSummary:
        with self.db.session() as session:
            batch = session.get(Batch, batch_id)
            if batch is None or (scope is not None and batch.owner != scope):
                raise NotFound(f"no batch {batch_id}")
            return _summaries(session, [batch])[0]

    def list_batches(self, scope: str | None, *, after: str | None = None, limit: int = 20) -> BatchPage:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        query = select(Batch).where(_in_scope(scope))
        with self.db.session() as session:
            if after is not None:
                anchor = session.execute(select(Batch.created_at, Batch.id)
                                         .where(Batch.id == after, _in_scope(scope))).first()
                if anchor is None:
                    raise InvalidRequest(f"after={after!r} is not one of your batches; pass the id of the "
                                         "last batch of the previous page")
                query = query.where(or_(Batch.created_at < anchor.created_at,
                                        and_(Batch.created_at == anchor.created_at, Batch.id < anchor.id)))
            newest_first = query.order_by(Batch.created_at.desc(), Batch.id.desc())
            rows = list(session.scalars(newest_first.limit(limit + 1)))
            return BatchPage(_summaries(session, rows[:limit]), has_more=len(rows) > limit)

    # -- cancel ---------------------------------------------------------------------------
    def cancel(self, scope: str | None, batch_id: str, now: dt.datetime) -> BatchSummary:
        """in_progress -> cancelling, and its jobs not yet running are cancelled at once (a worker
        that later receives one skips it). The scheduler ends the batch ``cancelled`` once its
        running jobs have finished. Cancelling a cancelled batch again changes nothing."""
        with self.db.session() as session:
            moved = rows_affected(session.execute(
                update(Batch).where(Batch.id == batch_id, _in_scope(scope),
                                    Batch.status.in_(CANCELLABLE_BATCH_STATUSES))
                .values(status=BatchStatus.CANCELLING.value, cancelling_at=now)))
            if moved:
                _end_waiting_jobs(session, batch_id, JobStatus.CANCELLED, CANCELLED_ERROR, now,
                                  skip_locked=False)
        summary = self.get(scope, batch_id)
        status = BatchStatus(summary.batch.status)
        if not moved and status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            raise Conflict(f"batch {batch_id} is {status.value}; only a validating or in_progress batch can "
                           "be cancelled")
        return summary

    # -- the lifecycle (the scheduler's side) ---------------------------------------------
    def end_waiting_jobs_of_ended_batches(self, now: dt.datetime, limit: int) -> int:
        """Jobs not yet running in a cancelling batch end ``cancelled``, and in a batch past its
        completion window ``expired``, for up to ``limit`` batches. A cancel already ended them;
        this catches jobs a lost worker's lease sent back to pending afterwards, and expiry.
        Returns how many jobs ended."""
        ended = or_(Batch.status == BatchStatus.CANCELLING.value,
                    and_(Batch.status == BatchStatus.IN_PROGRESS.value, Batch.expires_at <= now))
        waiting = exists().where(Job.batch_id == Batch.id, Job.status.in_(CANCELLABLE_STATUSES))
        with self.db.session() as session:
            found = session.execute(select(Batch.id, Batch.status).where(ended, waiting)
                                    .order_by(Batch.created_at).limit(limit)).all()
            total = 0
            for batch_id, status in found:
                if status == BatchStatus.CANCELLING.value:
                    total += _end_waiting_jobs(session, batch_id, JobStatus.CANCELLED, CANCELLED_ERROR, now)
                else:
                    total += _end_waiting_jobs(session, batch_id, JobStatus.EXPIRED, EXPIRED_ERROR, now)
        return total

    def start_finalizing(self, now: dt.datetime, limit: int) -> list[str]:
        """in_progress -> finalizing for up to ``limit`` batches whose jobs are all final."""
        unfinished = exists().where(Job.batch_id == Batch.id, Job.status.not_in(FINAL_STATUSES))
        with self.db.session() as session:
            in_progress = Batch.status == BatchStatus.IN_PROGRESS.value
            candidates = list(session.scalars(select(Batch.id).where(in_progress, ~unfinished)
                                              .order_by(Batch.created_at).limit(limit)))
            moved = []
            for batch_id in candidates:
                # Guarded: the API may have cancelled it, or another scheduler moved it, meanwhile.
                if rows_affected(session.execute(
                        update(Batch).where(Batch.id == batch_id, in_progress, ~unfinished)
                        .values(status=BatchStatus.FINALIZING.value, finalizing_at=now))):
                    moved.append(batch_id)
        return moved

    def finish(self, now: dt.datetime, limit: int, render: RenderFiles) -> list[tuple[str, BatchStatus]]:
        """Write the output and error files of up to ``limit`` batches that are finalizing, or
        cancelling with no job left running, and end them completed, expired or cancelled.
        Each batch is finished in one transaction under its row's lock (a batch another
        scheduler is finishing is skipped), so its files are written once."""
        unfinished = exists().where(Job.batch_id == Batch.id, Job.status.not_in(FINAL_STATUSES))
        finishable = or_(Batch.status == BatchStatus.FINALIZING.value,
                         and_(Batch.status == BatchStatus.CANCELLING.value, ~unfinished))
        with self.db.session() as session:
            candidates = list(session.scalars(select(Batch.id).where(finishable).order_by(Batch.created_at)
                                              .limit(limit)))
        finished = []
        for batch_id in candidates:
            with self.db.session() as session:
                batch = session.scalar(select(Batch).where(Batch.id == batch_id, finishable)
                                       .with_for_update(skip_locked=True, of=Batch.__table__))
                if batch is None:
                    continue
                final = _final_status(session, batch, now)
                output, errors = render(_jobs_in_order(session, batch_id))
                if output is not None:
                    batch.output_file_id = _add_file(session, batch, "output", output, now)
                if errors is not None:
                    batch.error_file_id = _add_file(session, batch, "error", errors, now)
                batch.status = final.value
                setattr(batch, f"{final.value}_at", now)   # completed_at, expired_at or cancelled_at
                finished.append((batch_id, final))
        return finished


def _add_file(session: Session, batch: Batch, kind: str, content: bytes, now: dt.datetime) -> str:
    row = new_file(batch.owner, OUTPUT_PURPOSE, f"batch_{batch.id}_{kind}.jsonl", content, now)
    session.add(row)
    return row.id


def _final_status(session: Session, batch: Batch, now: dt.datetime) -> BatchStatus:
    if batch.status == BatchStatus.CANCELLING.value:
        return BatchStatus.CANCELLED
    # Expired: its completion window has ended and some request did not run (it ended expired).
    window_ended = batch.expires_at is not None and batch.expires_at <= (batch.finalizing_at or now)
    if window_ended and session.scalar(select(Job.id).where(Job.batch_id == batch.id,
                                                            Job.status == JobStatus.EXPIRED).limit(1)):
        return BatchStatus.EXPIRED
    return BatchStatus.COMPLETED


def _jobs_in_order(session: Session, batch_id: str) -> Iterator[Job]:
    """The batch's jobs in submission order (its input file's order), read in chunks."""
    query = (select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at, Job.id)
             .execution_options(yield_per=FINISH_READ_CHUNK))
    yield from session.scalars(query)


def _end_waiting_jobs(session: Session, batch_id: str, status: JobStatus, error: str, now: dt.datetime, *,
                      skip_locked: bool = True) -> int:
    """A batch's pending and queued jobs end ``status``; rows are locked in id order. With
    ``skip_locked`` (the scheduler's upkeep) a row another transaction holds is left for the next
    call instead of waited for."""
    lockable = (select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(CANCELLABLE_STATUSES))
                .order_by(Job.id).with_for_update(key_share=True, skip_locked=skip_locked))
    return rows_affected(session.execute(
        update(Job).where(Job.id.in_(lockable), Job.status.in_(CANCELLABLE_STATUSES))
        .values(status=status, error=error, finished_at=now, updated_at=now, lease_expires_at=None)))


def _in_scope(scope: str | None) -> ColumnElement[bool]:
    return true() if scope is None else Batch.owner == scope


def _summaries(session: Session, batches: list[Batch]) -> list[BatchSummary]:
    """Each batch with its jobs' counts per status, cost and tokens (one grouped read for all)."""
    if not batches:
        return []
    rows = session.execute(
        select(Job.batch_id, Job.status, func.count(), func.coalesce(func.sum(Job.cost_usd), 0.0),
               func.coalesce(func.sum(Job.input_tokens), 0), func.coalesce(func.sum(Job.output_tokens), 0))
        .where(Job.batch_id.in_([batch.id for batch in batches])).group_by(Job.batch_id, Job.status)).all()
    per_batch: dict[str, list[tuple[str, int, float, int, int]]] = {}
    for batch_id, status, count, cost, input_tokens, output_tokens in rows:
        per_batch.setdefault(str(batch_id), []).append(
            (JobStatus(status).value, int(count), float(cost or 0.0), int(input_tokens or 0),
             int(output_tokens or 0)))
    summaries = []
    for batch in batches:
        groups = per_batch.get(batch.id, [])
        summaries.append(BatchSummary(
            batch, counts={status: count for status, count, *_ in groups}, cost_usd=sum(g[2] for g in groups),
            input_tokens=sum(g[3] for g in groups), output_tokens=sum(g[4] for g in groups)))
    return summaries


def settled_quality(session: Session, batch_ids: set[str]) -> dict[str, tuple[int, float]]:
    """Per batch: (jobs an earlier tick dispatched, the sum of their predicted quality). The tick
    counts them in the batch's mean-quality row (optimizer/problem.py), so alpha holds over the
    whole batch and not only over each tick's share of it."""
    if not batch_ids:
        return {}
    settled = or_(Job.status.in_(SETTLED_STATUSES),
                  and_(Job.status == JobStatus.PENDING, Job.escalate_to.is_not(None)))
    rows = session.execute(
        select(Job.batch_id, func.count(), func.sum(Job.predicted_quality))
        .where(Job.batch_id.in_(sorted(batch_ids)), Job.predicted_quality.is_not(None), settled)
        .group_by(Job.batch_id)).all()
    return {str(batch_id): (int(count), float(total or 0.0)) for batch_id, count, total in rows}
