"""SQLAlchemy 2 table models. Only ``scheduler.storage`` imports SQLAlchemy.

Alembic migrations in ``migrations/`` create exactly these tables; a test compares them.
"""
from __future__ import annotations

import builtins
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON, Boolean, Enum, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, text, true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scheduler.plan import Escalation
from scheduler.storage.types import JobStatus, UTCDateTime

STATUS_TYPE = Enum(
    JobStatus, native_enum=False, length=16, validate_strings=True,
    values_callable=lambda enum_cls: [member.value for member in enum_cls], name="job_status",
)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Tenant(Base):
    """Who submits work: jobs, batches, files and keys belong to one tenant (``owner`` columns).

    Its limits are None when unlimited; its weight is its share of scarce capacity."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    max_spend_usd: Mapped[float | None] = mapped_column(Float)
    max_pending_jobs: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ApiKey(Base):
    """A bearer key of one tenant, stored only as its SHA-256; an admin key may act for any tenant."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"), index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))     # the key's first characters, to recognise it in a list
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class StoredFile(Base):
    """A file of the OpenAI Files API: a batch's input, or the output and errors Switchyard writes."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created_at", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[builtins.bytes] = mapped_column(LargeBinary)   # builtins: `bytes` is a column here
    created_at: Mapped[dt.datetime]


class Batch(Base):
    """Jobs submitted together; the unit of a mean-quality target and a spend cap.

    A batch made from an input file through the OpenAI Batches API also carries that API's
    fields (endpoint, files, status and its timestamps); a batch submitted with inline jobs has
    them too, filled as far as they apply."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_batches_owner_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    alpha: Mapped[float | None] = mapped_column(Float)
    max_cost_usd: Mapped[float | None] = mapped_column(Float)
    num_jobs: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    # The OpenAI Batches API's view of the batch.
    status: Mapped[str] = mapped_column(String(16), server_default="in_progress")
    endpoint: Mapped[str | None] = mapped_column(String(32))
    completion_window: Mapped[str | None] = mapped_column(String(8))
    input_file_id: Mapped[str | None] = mapped_column(String(64))
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list[Any] | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    expires_at: Mapped[dt.datetime | None]
    in_progress_at: Mapped[dt.datetime | None]
    finalizing_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]
    failed_at: Mapped[dt.datetime | None]
    expired_at: Mapped[dt.datetime | None]
    cancelling_at: Mapped[dt.datetime | None]
    cancelled_at: Mapped[dt.datetime | None]


def prompt_text(prompt: str | None, messages: list[dict[str, Any]] | None) -> str:
    """A stored job's text as the predictor reads it: the prompt, or its messages' contents."""
    return prompt if prompt is not None else "\n".join(m["content"] for m in messages or [])


def cascade_steps(stored: list[Any] | None) -> tuple[Escalation, ...]:
    """A job's stored cascade (``jobs.cascade``) as the plan's steps."""
    return tuple(Escalation(float(step["accept_at"]), str(step["next_model"])) for step in stored or ())


def cascade_json(steps: Sequence[Escalation]) -> list[dict[str, Any]] | None:
    """The plan's steps as ``jobs.cascade`` stores them (None: no step, the answer is accepted as it is)."""
    return [{"accept_at": step.accept_at, "next_model": step.next_model} for step in steps] or None


PENDING_ONLY = text("status = 'pending'")


class Job(Base):
    """One prompt and everything that happens to it."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
        Index("ix_jobs_scored_at", "scored_at"),
        # The tick's window sources read pending jobs by nearest deadline and by expiry; partial
        # indexes keep those reads proportional to the window, not to the jobs table.
        Index("ix_jobs_pending_deadline_at", "deadline_at", postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY),
        Index("ix_jobs_pending_expires_at", "expires_at", postgresql_where=PENDING_ONLY, sqlite_where=PENDING_ONLY),
        # Fair share reads each tenant's oldest pending jobs.
        Index("ix_jobs_pending_owner_created_at", "owner", "created_at", postgresql_where=PENDING_ONLY,
              sqlite_where=PENDING_ONLY),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    status: Mapped[JobStatus] = mapped_column(STATUS_TYPE)
    # What to generate.
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[Any] | None]
    max_tokens: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    stop: Mapped[list[Any] | None]
    # Constraints.
    min_quality: Mapped[float | None] = mapped_column(Float)
    deadline_at: Mapped[dt.datetime | None]
    allowed_models: Mapped[list[Any] | None]
    max_cost_usd: Mapped[float | None] = mapped_column(Float)
    on_deadline_miss: Mapped[str] = mapped_column(String(16), server_default="run_late")
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    custom_id: Mapped[str | None] = mapped_column(String(512))   # its line's custom_id in a batch input file
    # The scheduling decision and its execution.
    assigned_model: Mapped[str | None] = mapped_column(String(64))
    assignment_reason: Mapped[str | None] = mapped_column(Text)
    exploring: Mapped[bool | None] = mapped_column(Boolean)   # assigned to try a little-tried model
    predicted_quality: Mapped[float | None] = mapped_column(Float)
    predicted_cost_usd: Mapped[float | None] = mapped_column(Float)
    dispatch_id: Mapped[str | None] = mapped_column(String(36))
    run_token: Mapped[str | None] = mapped_column(String(36))
    attempts: Mapped[int] = mapped_column(Integer, default=0)   # runs started, every cascade step counted
    # Cascades (issue 12): whether the plan may cascade this job at all (the job's or its batch's
    # ``cascade``); the plan's remaining steps ([{"accept_at", "next_model"}], None = accept the
    # answer as it is); the model the job must run next after its answers were judged too weak
    # (kept through retries of that step, cleared when an answer is accepted); the runs started
    # before the current step (max_attempts counts the runs of one step); the attempt whose
    # answer is the job's result.
    cascade_allowed: Mapped[bool] = mapped_column(Boolean, server_default=true())
    cascade: Mapped[list[Any] | None]
    escalate_to: Mapped[str | None] = mapped_column(String(64))
    attempts_before_step: Mapped[int] = mapped_column(Integer, server_default="0")
    accepted_attempt: Mapped[int | None] = mapped_column(Integer)
    lease_expires_at: Mapped[dt.datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    # The outcome.
    result_text: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # What Switchyard changed or noticed while storing this job (e.g. characters the database
    # cannot hold were removed from its output), so nothing is altered silently.
    notes: Mapped[str | None] = mapped_column(Text)
    # The outcome label the predictor learns from: a grade against the reference, or feedback.
    reference: Mapped[str | None] = mapped_column(Text)
    grader: Mapped[str | None] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    score_source: Mapped[str | None] = mapped_column(String(16))
    scored_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    # A job still pending at this time ends ``expired`` with its last reason (max_pending).
    expires_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime]
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class AttemptDecision(str, enum.Enum):
    """What became of one attempt's answer (``job_attempts.decision``; None while it awaits review)."""

    ACCEPTED = "accepted"     # the job's result
    ESCALATED = "escalated"   # judged too weak: the job went on to the next model of its cascade
    REJECTED = "rejected"     # answered, but the review accepted another attempt's answer
    FAILED = "failed"         # the run produced no answer (engine error, timeout, refused output)


class JobAttempt(Base):
    """One run of a job on one model: its answer, what it cost, and what the review made of it.

    A job planned without a cascade has one row per run (its answer accepted as it is); a
    cascaded job has one per model it ran (and per failed run). ``score`` is the answer's own
    label (its grade against the job's reference, or feedback on the accepted answer): the
    learner fits the ex-ante predictor and the answer judge from these rows."""

    __tablename__ = "job_attempts"
    __table_args__ = (Index("ix_job_attempts_scored_at", "scored_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)   # jobs.attempts at its claim
    model: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    answer: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    ex_ante_p: Mapped[float | None] = mapped_column(Float)    # the model's p predicted from the prompt alone
    p_post: Mapped[float | None] = mapped_column(Float)       # the judge's p for the answer (latest review)
    judge: Mapped[str | None] = mapped_column(String(64))     # the judge version that gave p_post
    decision: Mapped[str | None] = mapped_column(String(16))  # AttemptDecision; None: awaiting review
    reason: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    score_source: Mapped[str | None] = mapped_column(String(16))
    scored_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    reviewed_at: Mapped[dt.datetime | None]


class FleetModel(Base):
    """A model of the fleet as last read from the fleet file (the API lists these)."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime]


class WorkerHeartbeat(Base):
    """What a worker process last said about itself."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    mean_latency_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]


class Decision(Base):
    """One scheduling decision for one job in one tick: assigned to a model, or deferred.

    A deferral is recorded when its reason changes, not every tick it repeats; old rows are
    pruned after ``decision_retention_s``."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tick_id: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    predicted_quality: Mapped[float | None] = mapped_column(Float)
    predicted_cost_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime]


class Leadership(Base):
    """The fencing token of the tick leader: one row, its epoch raised by every new leader.

    A tick commits only while the epoch it was planned under is still current, so a leader that
    lost its lock (and does not know yet) can never commit beside its successor."""

    __tablename__ = "leadership"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[dt.datetime]
    last_tick_at: Mapped[dt.datetime | None]


class Tick(Base):
    """One committed tick: who planned it under which epoch, and what it decided."""

    __tablename__ = "ticks"

    tick_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    holder: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[dt.datetime] = mapped_column(index=True)
    committed_at: Mapped[dt.datetime]
    window_jobs: Mapped[int] = mapped_column(Integer)
    assigned: Mapped[int] = mapped_column(Integer)
    deferred: Mapped[int] = mapped_column(Integer)
    expired: Mapped[int] = mapped_column(Integer)
