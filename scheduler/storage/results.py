"""The workers' side of the store: claim queued jobs, write each outcome exactly once.

Every write is a guarded status transition. A worker may run a job only if the job is still
``queued`` under the dispatch its message carries; it may write the outcome only while the job
is ``running`` under the run token it got when claiming. A redelivered or stale message, a
cancelled job, or a job whose lease expired and was handed to another worker therefore never
gets a second result.

A micro-batch is claimed in one statement and its outcomes are written in as few transactions
as the worker chooses (``record``), because per-job round trips dominated the system's overhead.
Sharing a transaction must not make jobs share a fate: text the database cannot hold is made
storable first (and the job's ``notes`` say so), and when the database still refuses a row, the
micro-batch is written again with each job in a savepoint of its own, so that the refused row
fails its job alone and the others commit.

Row locks: the statements here that lock several job rows, and may wait for another transaction
while doing so, take the rows in job id order (claims, result writes); lease renewal never waits
for a row at all (``SKIP LOCKED``). A worker's heartbeat and its result writes therefore cannot
deadlock, as they did when renewal locked rows in table order and writes in micro-batch order.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, func, insert, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from scheduler.grading import Grader, grade
from scheduler.storage.database import Database, _is_connection_error, rows_affected
from scheduler.plan import Escalation
from scheduler.storage.tables import AttemptDecision, Job, JobAttempt, cascade_steps
from scheduler.storage.types import JobStatus

JOBS: Table = Job.__table__  # type: ignore[assignment]
ATTEMPTS: Table = JobAttempt.__table__  # type: ignore[assignment]
log = logging.getLogger(__name__)

# The job table's error column keeps the start of a long message (a stack of driver errors).
MAX_ERROR_CHARS = 4000
REPLACEMENT_CHARACTER = "\ufffd"
# What Postgres text cannot hold: NUL (psycopg refuses it before sending), and surrogate code
# points, which a Python str can carry (from a 'surrogateescape' decode, or a UTF-16 pair split
# in two) but UTF-8 cannot encode. Every other code point is storable in a UTF8 database.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What the database or its driver raises for a row it will not store (psycopg and sqlite3 raise
# the last two for values they cannot encode). Anything else is a bug in Switchyard: it fails the
# whole write, and the micro-batch's jobs are retried when their leases expire.
_ROW_REFUSALS = (DBAPIError, UnicodeError, OverflowError)


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
    model: str = ""                        # the model this run is on
    worker: str | None = None
    cascade: tuple[Escalation, ...] = ()   # the plan's remaining steps: () = the answer is accepted as it is
    escalated: bool = False                # this run is an escalation: the job has earlier answers to weigh
    attempts_before_step: int = 0          # runs of earlier cascade steps (max_attempts counts this step's)
    predicted_quality: float | None = None

    @property
    def step_attempts(self) -> int:
        """Runs of the current cascade step, this one included."""
        return self.attempts - self.attempts_before_step

    @property
    def needs_review(self) -> bool:
        """Its answer is judged before it is accepted: the plan has a next step, or answers of
        earlier steps compete with it."""
        return bool(self.cascade) or self.escalated


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
        # The rows are locked in id order before they are updated (a plain UPDATE locks them in
        # whatever order its scan meets them), so two claims of overlapping micro-batches (a
        # redelivered message) wait for each other instead of deadlocking. The guard is checked
        # again on each row once its lock is held: a job claimed or cancelled meanwhile drops out.
        # NO KEY UPDATE is the lock the UPDATE takes anyway; FOR UPDATE would also wait for the
        # tick's decision rows that reference these jobs.
        claimable = (select(JOBS.c.id)
                     .where(JOBS.c.id.in_(list(job_ids)), JOBS.c.status == JobStatus.QUEUED,
                            JOBS.c.dispatch_id == dispatch_id, JOBS.c.assigned_model == model)
                     .order_by(JOBS.c.id).with_for_update(key_share=True))
        with self.db.session() as session:
            rows = session.execute(
                update(JOBS).where(JOBS.c.id.in_(claimable))
                .values(status=JobStatus.RUNNING, run_token=token, attempts=JOBS.c.attempts + 1,
                        worker=worker, started_at=now, updated_at=now,
                        lease_expires_at=now + dt.timedelta(seconds=run_lease_s))
                .returning(JOBS.c.id, JOBS.c.attempts, JOBS.c.prompt, JOBS.c.messages, JOBS.c.max_tokens,
                           JOBS.c.temperature, JOBS.c.stop, JOBS.c.reference, JOBS.c.grader, JOBS.c.cascade,
                           JOBS.c.escalate_to, JOBS.c.attempts_before_step, JOBS.c.predicted_quality)).all()
        by_id = {row.id: ClaimedJob(id=row.id, run_token=token, attempts=row.attempts, prompt=row.prompt,
                                    messages=row.messages, max_tokens=row.max_tokens, temperature=row.temperature,
                                    stop=list(row.stop or []), reference=row.reference, grader=row.grader,
                                    model=model, worker=worker, cascade=cascade_steps(row.cascade),
                                    escalated=row.escalate_to is not None,
                                    attempts_before_step=row.attempts_before_step or 0,
                                    predicted_quality=row.predicted_quality)
                 for row in rows}
        return [by_id[job_id] for job_id in job_ids if job_id in by_id]

    def extend_leases(self, run_tokens: list[str], until: dt.datetime) -> int:
        """Keep running jobs' leases alive while their worker is alive and within its timeout.

        A row another transaction has locked is skipped rather than waited for: renewal never
        waits, so it can never be one side of a deadlock. The lock holder is almost always this
        worker writing the job's outcome, which ends the lease anyway; any other row is renewed
        by the next beat, well within the lease.
        """
        if not run_tokens:
            return 0
        renewable = (select(JOBS.c.id)
                     .where(JOBS.c.run_token.in_(run_tokens), JOBS.c.status == JobStatus.RUNNING)
                     .order_by(JOBS.c.id).with_for_update(key_share=True, skip_locked=True))
        with self.db.session() as session:
            return rows_affected(session.execute(
                update(JOBS).where(JOBS.c.id.in_(renewable)).values(lease_expires_at=until)))

    def record(self, results: Sequence[tuple[ClaimedJob, Outcome | Failure]], now: dt.datetime,
               max_attempts: int) -> list[JobStatus | None]:
        """Write several outcomes in one transaction, each job's write isolated from the others'.

        Per job (in ``results`` order): the status written, or None when nothing was written
        (this run no longer owns the job, or the database refused even its failure). An outcome
        the database refuses is written as a failure of that job (see ``_write_isolated``).
        """
        statuses: list[JobStatus | None] = [None] * len(results)
        # In job id order, the order claims lock rows in (see the module docstring).
        in_id_order = sorted(range(len(results)), key=lambda i: results[i][0].id)
        with self.db.session() as session:
            try:
                # All rows under one savepoint first: a savepoint per job would add two round
                # trips per job (claim plus write went from 1.0 to 1.45 ms per job of 32).
                with session.begin_nested():
                    attempts: list[dict[str, Any]] = []
                    for index in in_id_order:
                        job, result = results[index]
                        statuses[index] = _write(session, job, result, now, max_attempts, attempts)
                    _insert_attempts(session, attempts)
                return statuses
            except _ROW_REFUSALS as exc:  # the savepoint is rolled back: nothing of the batch is written
                if _is_connection_lost(exc):
                    raise
            # Some row was refused: write each job again in a savepoint of its own, so that only
            # the refused row's job fails.
            for index in in_id_order:
                job, result = results[index]
                statuses[index] = _write_isolated(session, job, result, now, max_attempts)
        return statuses


def storable_text(text: str) -> tuple[str, str | None]:
    """``text`` as Postgres can store it, and what had to change (None: nothing did).

    NUL and unpaired surrogates become U+FFFD; a surrogate pair split into two code points is
    joined into the one character it encodes (nothing is lost).
    """
    if not _UNSTORABLE.search(text):
        return text, None
    nuls = text.count("\x00")
    surrogates = sum(1 for char in text if "\ud800" <= char <= "\udfff")
    # The UTF-16 round trip pairs up what it can and replaces each unpaired half with U+FFFD.
    joined = text.replace("\x00", REPLACEMENT_CHARACTER)
    joined = joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    unpaired = joined.count(REPLACEMENT_CHARACTER) - text.count(REPLACEMENT_CHARACTER) - nuls
    pairs = (surrogates - unpaired) // 2
    replaced = " and ".join(part for part in (_count(nuls, "NUL character"),
                                               _count(unpaired, "unpaired surrogate")) if part)
    changes = [f"{replaced}; replaced with U+FFFD"] if replaced else []
    if pairs:
        changes.append(f"{_count(pairs, 'surrogate pair')} split into two code points; joined")
    return joined, "; ".join(changes)


def _count(number: int, noun: str) -> str:
    return "" if not number else f"{number} {noun}{'' if number == 1 else 's'}"


def _write_isolated(session: Session, job: ClaimedJob, result: Outcome | Failure, now: dt.datetime,
                    max_attempts: int) -> JobStatus | None:
    """Write one job's outcome in a savepoint of its own.

    If the database (or the driver) refuses the row, only this savepoint is rolled back and the
    job is failed with the reason instead: not retried when the refusal would recur (the value
    can never be stored), retried when it was transient (a lock timeout, a deadlock). A lost
    connection is not the row's fault: it propagates, and the caller retries the whole write.
    """
    try:
        with session.begin_nested():
            return _write_with_attempt(session, job, result, now, max_attempts)
    except _ROW_REFUSALS as exc:
        if _is_connection_lost(exc):
            raise
        refusal = exc
    transient = isinstance(refusal, OperationalError)
    log.warning("job %s: the database refused its outcome (%s); failing the job%s", job.id, _describe(refusal),
                " for a retry" if transient else "")
    failure = Failure(f"the outcome could not be stored: {_describe(refusal)}", retry=transient)
    try:
        with session.begin_nested():
            return _write_with_attempt(session, job, failure, now, max_attempts)
    except _ROW_REFUSALS as exc:  # the rest of the micro-batch still commits
        if _is_connection_lost(exc):
            raise
        # Nothing can be written for it (e.g. another transaction holds its row past the lock
        # timeout): the job stays running until its lease expires, and the tick then retries or
        # fails it like a lost worker's job.
        log.error("job %s: the database refused even its failure (%s); leaving it to its lease", job.id,
                  _describe(exc))
        return None


def _describe(exc: Exception) -> str:
    """The error's class and the database's own message, without the SQL and its parameters
    (which SQLAlchemy adds, and which hold the whole output)."""
    reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    primary = getattr(getattr(reason, "diag", None), "message_primary", None)
    return f"{type(reason).__name__}: {primary or reason}"


def _is_connection_lost(exc: Exception) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError)) and _is_connection_error(exc)


def _write_with_attempt(session: Session, job: ClaimedJob, result: Outcome | Failure, now: dt.datetime,
                        max_attempts: int) -> JobStatus | None:
    attempts: list[dict[str, Any]] = []
    status = _write(session, job, result, now, max_attempts, attempts)
    _insert_attempts(session, attempts)
    return status


def _insert_attempts(session: Session, rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT; every row gets every key any row has (an executemany binds one set
    of columns: an accepted answer carries its decision and label, one awaiting review does not)."""
    if rows:
        keys = {key for row in rows for key in row}
        session.execute(insert(ATTEMPTS), [dict.fromkeys(keys) | row for row in rows])


def _write(session: Session, job: ClaimedJob, result: Outcome | Failure, now: dt.datetime,
           max_attempts: int, attempts: list[dict[str, Any]]) -> JobStatus | None:
    """Write one run's outcome to the job (guarded by its run token) and, when that was written,
    add the run's row for ``job_attempts`` to ``attempts``.

    An answer whose plan has no further step is accepted here (``succeeded``); one that must be
    judged first (a cascade step, or an escalation whose answers compete) waits in ``reviewing``
    for the scheduler (scheduler/review.py). The job's cost is the sum of its attempts'."""
    attempt: dict[str, Any] = {"job_id": job.id, "attempt": job.attempts, "model": job.model, "worker": job.worker,
                               "created_at": now}
    if isinstance(result, Failure):
        final = not result.retry or job.step_attempts >= max_attempts
        error, changed = storable_text(result.error[:MAX_ERROR_CHARS])
        extra: dict[str, Any] = {"finished_at": now} if final else {"dispatch_id": None}
        status = JobStatus.FAILED if final else JobStatus.PENDING
        reason = f"failed: {error}" if final else f"failed, retried: {error}"
        if final and job.escalated:
            # An escalation that cannot run does not throw away the answers the job already has:
            # the review accepts the best of them (no further step).
            status, extra = JobStatus.REVIEWING, {"cascade": None}
            reason = f"failed ({error}); the best earlier answer will be accepted"
        written = _guarded(session, job, now, _note(job, "error", changed), status=status, error=error, **extra)
        if written:
            attempts.append(attempt | {"decision": AttemptDecision.FAILED.value, "reason": reason[:MAX_ERROR_CHARS]})
        return status if written else None
    text, changed = storable_text(result.text)
    label: dict[str, Any] = {}
    if job.reference is not None:
        # Graded where the result is written, so the label lands with it (the stored text is graded).
        label = {"score": grade(text, job.reference, Grader(job.grader or Grader.CONTAINS.value)),
                 "score_source": "grader", "scored_at": now}
    spent = func.coalesce(JOBS.c.cost_usd, 0.0) + result.cost_usd
    answer = {"answer": text, "finish_reason": result.finish_reason, "input_tokens": result.input_tokens,
              "output_tokens": result.output_tokens, "cost_usd": result.cost_usd, "latency_s": result.latency_s}
    if job.needs_review:
        # The answer waits for the review; the job's result columns stay empty until one is accepted.
        written = _guarded(session, job, now, _note(job, "output", changed), status=JobStatus.REVIEWING,
                           cost_usd=spent, error=None)
        if written:
            attempts.append(attempt | answer | label)
        return JobStatus.REVIEWING if written else None
    written = _guarded(session, job, now, _note(job, "output", changed), status=JobStatus.SUCCEEDED,
                       result_text=text, finish_reason=result.finish_reason, input_tokens=result.input_tokens,
                       output_tokens=result.output_tokens, latency_s=result.latency_s, cost_usd=spent, error=None,
                       finished_at=now, accepted_attempt=job.attempts, **label)
    if written:
        attempts.append(attempt | answer | label | {
            "ex_ante_p": job.predicted_quality, "decision": AttemptDecision.ACCEPTED.value,
            "reason": "accepted: no cascade step planned", "reviewed_at": now})
    return JobStatus.SUCCEEDED if written else None


def _note(job: ClaimedJob, what: str, changed: str | None) -> str | None:
    return None if changed is None else f"attempt {job.attempts}: {what} held {changed}"


def _guarded(session: Session, job: ClaimedJob, now: dt.datetime, note: str | None, **values: Any) -> bool:
    """running -> anything, only under this run's token; ``note`` is added to the job's notes."""
    if note is not None:
        # Appended, not overwritten: an earlier attempt's note (or one written by anything
        # else that handled the job) stays readable.
        appended: ColumnElement[Any] = func.coalesce(JOBS.c.notes + "\n", "") + note
        values["notes"] = appended
    # A Core UPDATE on the table: the ORM-enabled form re-synchronises the session on every
    # statement, which cost more than the database round trip itself.
    return bool(rows_affected(session.execute(
        update(JOBS).where(JOBS.c.id == job.id, JOBS.c.status == JobStatus.RUNNING, JOBS.c.run_token == job.run_token)
        .values(updated_at=now, lease_expires_at=None, run_token=None, **values))))
