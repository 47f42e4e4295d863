"""Submitting, reading, listing and cancelling jobs (the API's side of the store).

New jobs belong to an ``owner`` (the tenant). Reads and changes take a ``scope``: the tenant whose
objects the caller may see, or None for every tenant's (an admin). An object outside the scope is
NotFound, exactly like one that does not exist.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Table, and_, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.errors import Conflict, InvalidRequest, NotFound
from scheduler.grading import Grader
from scheduler.jobspec import BatchSpec, JobSpec, unstorable_reason
from scheduler.settings import Settings
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.tables import Batch, Job, JobAttempt
from scheduler.storage.tenants import admit_jobs
from scheduler.storage.types import CANCELLABLE_STATUSES, BatchStatus, JobStatus


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class FileBatch:
    """An OpenAI batch of an input file's requests, as created (``POST /v1/batches``)."""

    input_file_id: str
    endpoint: str
    completion_window: str
    window_s: float                        # the completion window: its jobs' deadline and max_pending
    metadata: dict[str, str] | None
    alpha: float | None                    # Switchyard's metadata extension
    max_cost_usd: float | None

    def batch_row(self, owner: str, now: dt.datetime, *, num_jobs: int, status: BatchStatus) -> Batch:
        fingerprint = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return Batch(id=str(uuid.uuid4()), owner=owner, alpha=self.alpha, max_cost_usd=self.max_cost_usd,
                     num_jobs=num_jobs, request_hash=fingerprint, created_at=now, status=status.value,
                     endpoint=self.endpoint, completion_window=self.completion_window,
                     input_file_id=self.input_file_id, metadata_=self.metadata,
                     expires_at=now + dt.timedelta(seconds=self.window_s))


DEFAULT_MAX_PENDING_S: float = Settings.model_fields["max_pending_s"].default

# A new job's row: these columns in this order, with their Postgres types (for binary COPY; JSON
# columns travel as text, written by the same json.dumps as SQLAlchemy's JSON type). The one
# definition of what a submitted job holds, for the bulk writer and the single submit alike.
NEW_JOB_COLUMNS: dict[str, str] = {
    "id": "varchar", "batch_id": "varchar", "owner": "varchar", "status": "varchar", "prompt": "text",
    "messages": "json", "max_tokens": "int4", "temperature": "float8", "stop": "json", "min_quality": "float8",
    "deadline_at": "timestamptz", "allowed_models": "json", "max_cost_usd": "float8", "on_deadline_miss": "varchar",
    "metadata": "json", "reference": "text", "grader": "varchar", "idempotency_key": "varchar",
    "custom_id": "varchar", "request_hash": "varchar", "attempts": "int4", "created_at": "timestamptz",
    "updated_at": "timestamptz", "expires_at": "timestamptz", "cascade_allowed": "bool",
}
_COLUMN_NAMES = tuple(NEW_JOB_COLUMNS)
_JSON_POSITIONS = tuple(i for i, kind in enumerate(NEW_JOB_COLUMNS.values()) if kind == "json")
_COPY_TYPES = ["text" if kind == "json" else kind for kind in NEW_JOB_COLUMNS.values()]
_ATTRIBUTE_OF = {"metadata": "metadata_"}        # a column whose ORM attribute has another name
_COPY_JOBS = f"COPY jobs ({', '.join(NEW_JOB_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
JOBS: Table = Job.__table__  # type: ignore[assignment]
# A duplicate key found by a unique index: SQLAlchemy's error (INSERT) or the driver's own (COPY).
DUPLICATE_KEY_ERRORS = (IntegrityError, psycopg.errors.UniqueViolation)

# A request hash is what a repeated idempotency key is checked against, so only a job or batch
# with a key has one; the others store this (no request can name them again). It saves 10-20 us
# per job, a fifth of a 10,000-job batch's time in the API.
NO_REQUEST_HASH = ""

NewJobRow = tuple[Any, ...]     # values in NEW_JOB_COLUMNS order
RowOf = Callable[[int], NewJobRow]   # the i-th job's row


class JobStore:
    def __init__(self, db: Database, *, default_max_pending_s: float = DEFAULT_MAX_PENDING_S) -> None:
        """``default_max_pending_s``: how long a job may stay pending when neither it nor its batch
        says (the ``max_pending_s`` setting)."""
        self.db = db
        self.default_max_pending_s = default_max_pending_s

    # -- submit ---------------------------------------------------------------------------
    def submit_job(self, owner: str, spec: JobSpec, now: dt.datetime) -> tuple[Job, bool]:
        """Insert one pending job; returns (job, created). A repeated idempotency key returns
        the first job, or raises Conflict if the key was used for a different request. The
        owner's limits are checked first (TooManyPendingJobs, SpendCapReached: nothing written)."""
        request_hash = spec.request_hash() if spec.idempotency_key else NO_REQUEST_HASH
        row = _job_row(_new_ids(1)[0], owner, spec, None, now, spec.max_pending_s or self.default_max_pending_s,
                       request_hash)
        # What the caller is answered with (the row is written by _insert_jobs, without the ORM's bookkeeping).
        job = Job(**{_ATTRIBUTE_OF.get(name, name): value for name, value in zip(_COLUMN_NAMES, row, strict=True)})
        try:
            # One transaction for the key's lookup and the insert: a submit pays one round of
            # connection checkout, BEGIN and COMMIT. The lookup comes before the limits, so a
            # retry of a job already accepted gets it back even when the tenant is now at its limit.
            with self.db.session() as session:
                if spec.idempotency_key:
                    existing = session.scalar(select(Job).where(Job.owner == owner,
                                                                Job.idempotency_key == spec.idempotency_key))
                    if existing is not None:
                        self._check_same_request(existing, request_hash)
                        return existing, False
                admit_jobs(session, owner, 1)
                _insert_jobs(session, [row], copy=False)
            return job, True
        except IntegrityError:
            # A concurrent submit with the same key won the race: return its job.
            existing = self._job_by_key(owner, spec.idempotency_key or "")
            if existing is None:
                raise
            self._check_same_request(existing, request_hash)
            return existing, False

    def submit_batch(self, owner: str, spec: BatchSpec, now: dt.datetime) -> tuple[Batch, list[str], bool]:
        """Insert a batch and all its jobs in one transaction (all or nothing, the owner's limits
        included); returns (batch, its job ids in order, created). A repeated idempotency key
        returns the first batch, or raises Conflict if the key was used for a different request;
        a job's idempotency key used before (or by a concurrent submit) is a Conflict too."""
        keys = [job.idempotency_key for job in spec.jobs]
        hashes = spec.request_hashes() if spec.idempotency_key or any(keys) else None
        batch_hash = hashes.batch if hashes is not None and spec.idempotency_key else NO_REQUEST_HASH
        if spec.idempotency_key:
            found = self._batch_by_key(owner, spec.idempotency_key)
            if found is not None:
                self._check_same_request(found, batch_hash)
                return found, self._batch_job_ids(found.id), False
        batch = Batch(id=_new_ids(1)[0], owner=owner, name=spec.name, alpha=spec.alpha,
                      max_cost_usd=spec.max_cost_usd, num_jobs=len(spec.jobs),
                      idempotency_key=spec.idempotency_key, request_hash=batch_hash, created_at=now,
                      status=BatchStatus.IN_PROGRESS.value, in_progress_at=now)
        job_ids, times = _new_ids(len(spec.jobs)), _submission_times(now, len(spec.jobs))
        batch_max_pending_s = spec.max_pending_s or self.default_max_pending_s

        def row(index: int) -> NewJobRow:
            job = spec.jobs[index]
            job_hash = hashes.job(index) if hashes is not None and keys[index] else NO_REQUEST_HASH
            return _job_row(job_ids[index], owner, job, batch.id, times[index],
                            job.max_pending_s or batch_max_pending_s, job_hash, batch_cascade=spec.cascade)

        try:
            self._write_batch(owner, batch, row, keys)
        except DUPLICATE_KEY_ERRORS as exc:
            # A unique index refused a key. The batch's own: a concurrent submit of this batch won
            # (return its batch). Else a job's: used before, or by a concurrent submit.
            found = self._batch_by_key(owner, spec.idempotency_key) if spec.idempotency_key else None
            if found is not None:
                self._check_same_request(found, batch_hash)
                return found, self._batch_job_ids(found.id), False
            self._reject_reused_job_keys(owner, [key for key in keys if key])
            raise Conflict("an idempotency_key in this batch was used by a concurrent submit") from exc
        return batch, job_ids, True

    def submit_file_batch(self, owner: str, request: FileBatch, jobs: Sequence[tuple[str, JobSpec]],
                          now: dt.datetime) -> Batch:
        """An OpenAI batch from an input file, ``in_progress``, with one pending job per request
        line (``jobs``: custom_id and job), all written together or not at all (the owner's
        limits included). Its jobs' order is the file's."""
        batch = request.batch_row(owner, now, num_jobs=len(jobs), status=BatchStatus.IN_PROGRESS)
        batch.in_progress_at = now
        job_ids, times = _new_ids(len(jobs)), _submission_times(now, len(jobs))

        def row(index: int) -> NewJobRow:
            custom_id, spec = jobs[index]
            return _job_row(job_ids[index], owner, spec, batch.id, times[index], request.window_s,
                            spec.request_hash() if spec.idempotency_key else NO_REQUEST_HASH, custom_id=custom_id)

        self._write_batch(owner, batch, row, [spec.idempotency_key for _, spec in jobs])
        return batch

    def record_failed_batch(self, owner: str, request: FileBatch, errors: list[dict[str, object]],
                            now: dt.datetime) -> Batch:
        """An OpenAI batch whose input file is invalid: ``failed`` with its errors, no jobs."""
        batch = request.batch_row(owner, now, num_jobs=0, status=BatchStatus.FAILED)
        batch.failed_at = now
        batch.errors = errors
        with self.db.session() as session:
            session.add(batch)
        return batch

    def _write_batch(self, owner: str, batch: Batch, row: RowOf, keys: Sequence[str | None]) -> None:
        """The batch row, then its jobs (``row(i)``: the i-th job's, made as it is written, so that
        making rows overlaps the database storing the ones before), in one transaction: everything
        or nothing. The batch goes first, so a concurrent submit of the same batch key waits at its
        unique index and fails there, before it has written a job or taken the tenant's lock. Jobs
        with idempotency keys are written in key order, so two submits that share keys wait for
        each other at the unique index (the later one then fails) instead of deadlocking."""
        order: Iterable[int] = range(len(keys))
        if any(keys):
            order = sorted(order, key=lambda index: keys[index] or "")
        with self.db.session() as session:
            session.add(batch)
            session.flush()
            admit_jobs(session, owner, len(keys))
            _insert_jobs(session, map(row, order), copy=not self.db.is_sqlite)

    # -- read -----------------------------------------------------------------------------
    def get_job(self, scope: str | None, job_id: str) -> Job:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or not _in_scope(job.owner, scope):
                raise NotFound(f"no job {job_id}")
            return job

    def list_jobs(self, scope: str | None, *, status: JobStatus | None = None, batch_id: str | None = None,
                  model: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        """Newest first, keyset-paginated: pass ``next_cursor`` back to get the next page."""
        query = select(Job)
        if scope is not None:
            query = query.where(Job.owner == scope)
        if status is not None:
            query = query.where(Job.status == status)
        if batch_id is not None:
            query = query.where(Job.batch_id == batch_id)
        if model is not None:
            query = query.where(Job.assigned_model == model)
        if cursor:
            created_at, job_id = _decode_cursor(cursor)
            query = query.where(or_(Job.created_at < created_at,
                                    and_(Job.created_at == created_at, Job.id < job_id)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        return JobPage(rows, _encode_cursor(rows[-1]) if more else None)

    def job_attempts(self, scope: str | None, job_id: str) -> tuple[Job, list[JobAttempt]]:
        """The job and every attempt it made, in order (one read of each)."""
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None or not _in_scope(job.owner, scope):
                raise NotFound(f"no job {job_id}")
            attempts = list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                            .order_by(JobAttempt.attempt)))
            return job, attempts

    def job_status(self, scope: str | None, job_id: str) -> JobStatus:
        """Only the job's status: what a caller waiting for the job polls."""
        with self.db.session() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id, _scope_filter(scope)))
        if status is None:
            raise NotFound(f"no job {job_id}")
        return JobStatus(status)

    # -- cancel ---------------------------------------------------------------------------
    def cancel_job(self, scope: str | None, job_id: str, now: dt.datetime) -> Job:
        """Cancel a pending or queued job. A worker that later receives it skips it."""
        with self.db.session() as session:
            cancelled = rows_affected(session.execute(
                update(Job).where(Job.id == job_id, _scope_filter(scope),
                                  Job.status.in_(CANCELLABLE_STATUSES))
                .values(status=JobStatus.CANCELLED, finished_at=now, updated_at=now, lease_expires_at=None)
            ))
        job = self.get_job(scope, job_id)
        if not cancelled and job.status != JobStatus.CANCELLED:
            raise Conflict(f"job {job_id} is {job.status.value}; only pending or queued jobs can be cancelled")
        return job

    # -- feedback -------------------------------------------------------------------------
    def record_feedback(self, scope: str | None, job_id: str, score: float, now: dt.datetime) -> Job:
        """A person's (or an external grader's) score for a finished job; it overrides the built-in grade.
        It labels the accepted answer (its attempt), which is what the learner fits the answer judge on."""
        with self.db.session() as session:
            accepted = session.execute(
                update(Job).where(Job.id == job_id, _scope_filter(scope), Job.status == JobStatus.SUCCEEDED)
                .values(score=score, score_source="feedback", scored_at=now, updated_at=now)
                .returning(Job.accepted_attempt)).first()
            updated = accepted is not None
            if accepted is not None and accepted.accepted_attempt is not None:
                session.execute(update(JobAttempt).where(JobAttempt.job_id == job_id,
                                                         JobAttempt.attempt == accepted.accepted_attempt)
                                .values(score=score, score_source="feedback", scored_at=now))
        job = self.get_job(scope, job_id)
        if not updated:
            raise Conflict(f"job {job_id} is {job.status.value}; feedback is for succeeded jobs")
        return job

    # -- helpers --------------------------------------------------------------------------
    def _job_by_key(self, owner: str, key: str) -> Job | None:
        with self.db.session() as session:
            return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))

    def _batch_by_key(self, owner: str, key: str) -> Batch | None:
        with self.db.session() as session:
            return session.scalar(select(Batch).where(Batch.owner == owner, Batch.idempotency_key == key))

    def _batch_job_ids(self, batch_id: str) -> list[str]:
        with self.db.session() as session:
            return list(session.scalars(select(Job.id).where(Job.batch_id == batch_id)
                                        .order_by(Job.created_at, Job.id)))

    def _reject_reused_job_keys(self, owner: str, keys: Sequence[str]) -> None:
        """Conflict naming the keys earlier jobs of ``owner`` hold (nothing when none does)."""
        if not keys:
            return
        with self.db.session() as session:
            used = [key for key in session.scalars(select(Job.idempotency_key).where(
                Job.owner == owner, Job.idempotency_key.in_(keys))) if key]
        if used:
            raise Conflict(f"idempotency_key already used by earlier jobs: {sorted(used)[:10]}; "
                           "resubmit the batch with its own idempotency_key to make it idempotent")

    @staticmethod
    def _check_same_request(row: Job | Batch, request_hash: str) -> None:
        if row.request_hash != request_hash:
            raise Conflict(f"idempotency_key {row.idempotency_key!r} was already used for a different request")


def _in_scope(owner: str, scope: str | None) -> bool:
    return scope is None or owner == scope


def _scope_filter(scope: str | None) -> ColumnElement[bool]:
    return true() if scope is None else Job.owner == scope


def _job_row(job_id: str, owner: str, spec: JobSpec, batch_id: str | None, now: dt.datetime,
             max_pending_s: float, request_hash: str, *, custom_id: str | None = None,
             batch_cascade: bool | None = None) -> NewJobRow:
    """A pending job's row (NEW_JOB_COLUMNS); ``max_pending_s`` is the job's own, else its batch's,
    else the setting; so is ``cascade`` (default true). ``custom_id``: its line's id in a batch input file."""
    cascade_allowed = spec.cascade if spec.cascade is not None else batch_cascade is not False
    return (
        job_id, batch_id, owner, JobStatus.PENDING.value, spec.prompt,
        [m.model_dump() for m in spec.messages] if spec.messages is not None else None,
        spec.max_tokens, spec.temperature, spec.stop, spec.min_quality, spec.deadline, spec.allowed_models,
        spec.max_cost_usd, spec.on_deadline_miss, spec.metadata, spec.reference,
        (spec.grader or Grader.CONTAINS).value if spec.reference is not None else None,
        spec.idempotency_key, custom_id, request_hash, 0, now, now, now + dt.timedelta(seconds=max_pending_s),
        cascade_allowed,
    )


def _insert_jobs(session: Session, rows: Iterable[NewJobRow], *, copy: bool) -> None:
    """Write new jobs inside the session's transaction: with ``copy`` (a batch on Postgres) one
    binary COPY, its rows sent as they come; else one INSERT (SQLite's batches, a single job)."""
    if not copy:
        session.execute(insert(JOBS), [dict(zip(_COLUMN_NAMES, row, strict=True)) for row in rows])
        return
    driver = session.connection().connection.driver_connection
    assert driver is not None, "the session's connection is open inside its transaction"
    dumps = json.dumps      # as SQLAlchemy's JSON type writes a value, None included ('null')
    with driver.cursor() as cursor, cursor.copy(_COPY_JOBS) as stream:
        stream.set_types(_COPY_TYPES)
        for row in rows:
            values = list(row)
            for position in _JSON_POSITIONS:
                value = values[position]
                values[position] = "null" if value is None else dumps(value)
            stream.write_row(values)


def _new_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, as ``str(uuid.uuid4())`` writes them, from one
    read of the OS's randomness (uuid4() reads it once per id: 7 us each, 70 ms per 10,000 jobs)."""
    ids = []
    random = os.urandom(16 * count).hex()
    for start in range(0, 32 * count, 32):
        h = random[start:start + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return ids


def _submission_times(now: dt.datetime, count: int) -> list[dt.datetime]:
    """One microsecond apart: created_at then orders a batch's jobs as submitted (listing,
    results files, the tick's oldest-first claim) instead of by random id."""
    return [now + dt.timedelta(microseconds=index) for index in range(count)]


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The (created_at, id) a cursor points after. Anything but a cursor this API made (a naive or
    out-of-range time, an id the database cannot hold) is the caller's error, never a query."""
    try:
        created_at_text, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        created_at = dt.datetime.fromisoformat(created_at_text)
        if created_at.tzinfo is None or unstorable_reason(job_id) is not None:
            raise ValueError("not a cursor this API made")
        return created_at.astimezone(dt.UTC), job_id
    except (ValueError, OverflowError) as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidRequest("malformed cursor; pass back the next_cursor of a previous page") from exc


