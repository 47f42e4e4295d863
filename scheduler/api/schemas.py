"""What the API returns. Requests are ``scheduler.jobspec.JobSpec`` / ``BatchSpec``."""
from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scheduler.jobspec import RequestModel


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    batch_id: str | None
    owner: str
    status: str
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int
    temperature: float
    stop: list[str] | None
    min_quality: float | None
    deadline_at: dt.datetime | None
    allowed_models: list[str] | None
    max_cost_usd: float | None
    on_deadline_miss: str
    metadata: dict[str, Any] | None = Field(validation_alias="metadata_")
    reference: str | None
    grader: str | None
    score: float | None = Field(description="Outcome label: the grade against reference, or feedback.")
    score_source: str | None
    idempotency_key: str | None
    assigned_model: str | None
    assignment_reason: str | None
    predicted_quality: float | None
    predicted_cost_usd: float | None
    attempts: int
    lease_expires_at: dt.datetime | None
    worker: str | None
    result_text: str | None
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    latency_s: float | None
    error: str | None
    notes: str | None = Field(description="What Switchyard changed while storing the job's output "
                              "(e.g. characters the database cannot hold were removed), so nothing is silent.")
    created_at: dt.datetime
    expires_at: dt.datetime | None = Field(
        description="A job still pending at this time ends 'expired' (created_at + max_pending_s).")
    updated_at: dt.datetime
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class FeedbackIn(RequestModel):
    # strict: a JSON number only; not true/false or "1", which lax mode would read as 1.0.
    score: float = Field(strict=True, ge=0.0, le=1.0, description="How good the answer was: 0 bad .. 1 good.")


class JobPageOut(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    id: str
    owner: str
    name: str | None
    alpha: float | None
    max_cost_usd: float | None
    num_jobs: int
    idempotency_key: str | None
    created_at: dt.datetime
    counts: dict[str, int]
    cost_usd: float
    done: bool


class BatchCreatedOut(BaseModel):
    batch: BatchOut
    job_ids: list[str]


class ModelOut(BaseModel):
    name: str
    backend: str
    prompt_format: str
    usd_per_mtok_input: float | None
    usd_per_mtok_output: float | None
    usd_per_second: float | None
    capacity_jobs: int
    max_batch_jobs: int
    live_workers: int


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    worker_id: str
    model: str
    host: str
    pid: int
    concurrency: int
    jobs_done: int
    tokens_per_s: float | None
    mean_latency_s: float | None
    started_at: dt.datetime
    last_seen_at: dt.datetime


class ErrorOut(BaseModel):
    error: str = Field(description="What went wrong, in words a caller can act on.")
    detail: list[dict[str, Any]] | None = None
