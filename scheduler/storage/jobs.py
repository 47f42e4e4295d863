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
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import ColumnElement, and_, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from scheduler.errors import Conflict, InvalidRequest, NotFound
from scheduler.grading import Grader
from scheduler.jobspec import BatchSpec, JobSpec, unstorable_reason
from scheduler.settings import Settings
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.tables import Batch, Job
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
        if spec.idempotency_key:
            existing = self._job_by_key(owner, spec.idempotency_key)
            if existing is not None:
                self._check_same_request(existing, spec.request_hash())
                return existing, False
        try:
            with self.db.session() as session:
                admit_jobs(session, owner, 1)
                job = _new_job(owner, spec, None, now, spec.max_pending_s or self.default_max_pending_s)
                session.add(job)
            return job, True
        except IntegrityError:
            # A concurrent submit with the same key won the race: return its job.
            existing = self._job_by_key(owner, spec.idempotency_key or "")
            if existing is None:
                raise
            self._check_same_request(existing, spec.request_hash())
            return existing, False

    def submit_batch(self, owner: str, spec: BatchSpec, now: dt.datetime) -> tuple[Batch, list[Job], bool]:
        """Insert a batch and all its jobs in one transaction (all or nothing, the owner's limits
        included)."""
        if spec.idempotency_key:
            found = self._batch_by_key(owner, spec.idempotency_key)
            if found is not None:
                self._check_same_request(found, spec.request_hash())
                return found, self._batch_jobs(found.id), False
        self._reject_reused_job_keys(owner, spec.jobs)
        batch = Batch(id=str(uuid.uuid4()), owner=owner, name=spec.name, alpha=spec.alpha,
                      max_cost_usd=spec.max_cost_usd, num_jobs=len(spec.jobs),
                      idempotency_key=spec.idempotency_key, request_hash=spec.request_hash(), created_at=now,
                      status=BatchStatus.IN_PROGRESS.value, in_progress_at=now)
        # One microsecond apart: created_at then orders a batch's jobs as submitted (listing,
        # results files, the tick's oldest-first claim) instead of by random id.
        batch_max_pending_s = spec.max_pending_s or self.default_max_pending_s
        jobs = [_new_job(owner, job_spec, batch.id, now + dt.timedelta(microseconds=index),
                         job_spec.max_pending_s or batch_max_pending_s)
                for index, job_spec in enumerate(spec.jobs)]
        try:
            with self.db.session() as session:
                admit_jobs(session, owner, len(jobs))
                session.add(batch)
                session.flush()
                session.add_all(jobs)
        except IntegrityError as exc:
            found = self._batch_by_key(owner, spec.idempotency_key) if spec.idempotency_key else None
            if found is None:
                raise Conflict("an idempotency_key in this batch was used by a concurrent submit") from exc
            return found, self._batch_jobs(found.id), False
        return batch, jobs, True

    def submit_file_batch(self, owner: str, request: FileBatch, jobs: Sequence[tuple[str, JobSpec]],
                          now: dt.datetime) -> Batch:
        """An OpenAI batch from an input file, ``in_progress``, with one pending job per request
        line (``jobs``: custom_id and job), all written together or not at all (the owner's
        limits included). Its jobs' order is the file's."""
        batch = request.batch_row(owner, now, num_jobs=len(jobs), status=BatchStatus.IN_PROGRESS)
        batch.in_progress_at = now
        rows = [_new_job(owner, spec, batch.id, now + dt.timedelta(microseconds=index), request.window_s,
                         custom_id=custom_id)
                for index, (custom_id, spec) in enumerate(jobs)]
        with self.db.session() as session:
            admit_jobs(session, owner, len(rows))
            session.add(batch)
            session.flush()
            session.add_all(rows)
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
        """A person's (or an external grader's) score for a finished job; it overrides the built-in grade."""
        with self.db.session() as session:
            updated = rows_affected(session.execute(
                update(Job).where(Job.id == job_id, _scope_filter(scope), Job.status == JobStatus.SUCCEEDED)
                .values(score=score, score_source="feedback", scored_at=now, updated_at=now)))
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

    def _batch_jobs(self, batch_id: str) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at)))

    def _reject_reused_job_keys(self, owner: str, specs: Sequence[JobSpec]) -> None:
        keys = [s.idempotency_key for s in specs if s.idempotency_key]
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


def _new_job(owner: str, spec: JobSpec, batch_id: str | None, now: dt.datetime, max_pending_s: float, *,
             custom_id: str | None = None) -> Job:
    """A pending job row; ``max_pending_s`` is the job's own, else its batch's, else the setting.
    ``custom_id``: its line's id in a batch input file."""
    return Job(
        id=str(uuid.uuid4()), batch_id=batch_id, owner=owner, status=JobStatus.PENDING,
        prompt=spec.prompt,
        messages=[m.model_dump() for m in spec.messages] if spec.messages is not None else None,
        max_tokens=spec.max_tokens, temperature=spec.temperature, stop=spec.stop,
        min_quality=spec.min_quality, deadline_at=spec.deadline, allowed_models=spec.allowed_models,
        max_cost_usd=spec.max_cost_usd, on_deadline_miss=spec.on_deadline_miss, metadata_=spec.metadata,
        reference=spec.reference,
        grader=(spec.grader or Grader.CONTAINS).value if spec.reference is not None else None,
        idempotency_key=spec.idempotency_key, custom_id=custom_id,
        request_hash=spec.request_hash(), attempts=0, created_at=now, updated_at=now,
        expires_at=now + dt.timedelta(seconds=max_pending_s),
    )


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


