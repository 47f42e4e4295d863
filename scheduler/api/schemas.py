"""What the API returns. Requests are ``scheduler.jobspec.JobSpec`` and, on OpenAI's paths,
``scheduler.openai_compat`` (chat and text completions, ``POST /v1/batches``)."""
from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.jobspec import RequestModel


class AttemptOut(BaseModel):
    """One run of a job on one model: its answer, what it cost, and what the review made of it."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int = Field(description="The run's number (1 = the first run of the job).")
    model: str
    answer: str | None = Field(description="The model's answer (None: the run failed).")
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    latency_s: float | None
    ex_ante_p: float | None = Field(description="The model's chance of a good answer predicted from the prompt.")
    p_post: float | None = Field(description="The answer judge's chance that this answer is good (latest review).")
    judge: str | None = Field(description="The answer judge's version that gave p_post.")
    decision: str | None = Field(description="accepted (the job's result), escalated (judged too weak: the next "
                                 "model ran), rejected (another answer was accepted), failed; None: awaiting review.")
    reason: str | None = Field(description="Why, e.g. 'escalate: post-hoc p=0.31 < 0.55; next gemma-3-270m'.")
    score: float | None = Field(description="This answer's label: its grade against the reference, or feedback.")
    score_source: str | None
    accepted: bool = Field(default=False, description="This attempt's answer is the job's result.")
    created_at: dt.datetime
    reviewed_at: dt.datetime | None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    batch_id: str | None
    owner: str
    status: str = Field(description="pending, queued, running, reviewing (answered; the scheduler is judging "
                        "the answer before it accepts it or escalates to a stronger model), succeeded, failed, "
                        "cancelled or expired.")
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
    attempts: int = Field(description="Runs started, every model of a cascade and every retry counted.")
    cascade_allowed: bool = Field(default=True, description="false: the job said (or its batch said) cascade: "
                                  "false; one model, its answer accepted as it is.")
    cascade: list[dict[str, Any]] | None = Field(
        default=None, description="The plan's remaining cascade steps: after the answers so far, accept if the best "
        "answer's post-hoc p >= accept_at, else run next_model. None: the answer is accepted as it is.")
    escalate_to: str | None = Field(default=None, description="The model this job escalated to after its answers "
                                    "were judged too weak (pinned until its answer is reviewed).")
    accepted_attempt: int | None = Field(default=None, description="The attempt whose answer is the result.")
    attempt_history: list[AttemptOut] | None = Field(
        default=None, description="Every attempt: model, answer, tokens, cost, post-hoc p, decision and reason "
        "(GET /v1/jobs/{id} only; None in lists).")
    lease_expires_at: dt.datetime | None
    worker: str | None
    result_text: str | None = Field(description="The accepted answer (None until one is accepted).")
    finish_reason: str | None
    input_tokens: int | None = Field(description="The accepted answer's prompt tokens.")
    output_tokens: int | None = Field(description="The accepted answer's tokens.")
    cost_usd: float | None = Field(description="What the job cost: the sum of all its attempts.")
    latency_s: float | None = Field(description="The accepted answer's generation time.")
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


class BatchRequestCountsOut(BaseModel):
    total: int
    completed: int = Field(description="Requests answered (jobs succeeded).")
    failed: int = Field(
        description="Requests that ended without an answer (jobs failed, expired or cancelled).")


class BatchErrorOut(BaseModel):
    code: str
    message: str
    param: str | None
    line: int | None = Field(description="The input file's line (from 1).")


class BatchErrorsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchErrorOut]


class InputTokensDetailsOut(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetailsOut(BaseModel):
    reasoning_tokens: int = 0


class BatchUsageOut(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetailsOut = InputTokensDetailsOut()
    output_tokens: int
    output_tokens_details: OutputTokensDetailsOut = OutputTokensDetailsOut()
    total_tokens: int


class BatchOut(BaseModel):
    """A batch in OpenAI's shape, plus Switchyard's fields. Times are Unix seconds. A batch of
    inline jobs has no endpoint, input file or completion window."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str | None
    errors: BatchErrorsOut | None = Field(description="Why its input file was refused (status failed).")
    input_file_id: str | None
    completion_window: str | None
    status: str = Field(description="validating, failed, in_progress, finalizing, completed, expired, "
                                    "cancelling or cancelled.")
    output_file_id: str | None = Field(
        description="Answered requests, once the batch has ended (OpenAI's lines).")
    error_file_id: str | None = Field(
        description="Requests that ended without an answer, once the batch has ended.")
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCountsOut
    metadata: dict[str, str] | None
    usage: BatchUsageOut
    # Switchyard's extensions.
    owner: str = Field(description="The tenant it belongs to.")
    name: str | None
    alpha: float | None = Field(description="Mean predicted quality its scheduled jobs must reach.")
    max_cost_usd: float | None = Field(description="Spend cap for the whole batch.")
    num_jobs: int
    idempotency_key: str | None
    counts: dict[str, int] = Field(description="Its jobs per status.")
    cost_usd: float = Field(description="Spent so far on its finished jobs.")
    done: bool = Field(description="Every job is final (its status may still be finishing).")
    job_ids: list[str] | None = Field(
        default=None, description="Its jobs in order: in the answer to creating a batch of inline jobs only.")


class BatchListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str = Field(description="batch (an uploaded input file) or batch_output (written by a batch).")
    status: Literal["processed"] = Field(default="processed",
                                         description="Always processed (OpenAI: deprecated).")
    status_details: None = None
    expires_at: int | None = Field(default=None, description="Never: files are kept until deleted.")
    # Switchyard's extension.
    owner: str = Field(description="The tenant it belongs to.")


class FileListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeletedOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ModelOut(BaseModel):
    """A model in OpenAI's shape, plus what Switchyard knows of it. ``auto`` (the scheduler
    chooses per request) has no backend, prices or capacity of its own."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this API process loaded the fleet file.")
    owned_by: str
    # Switchyard's extensions.
    backend: str | None
    prompt_format: str | None
    usd_per_mtok_input: float | None
    usd_per_mtok_output: float | None
    usd_per_second: float | None
    capacity_jobs: int | None
    max_batch_jobs: int | None
    live_workers: int = Field(description="Live worker processes hosting it (auto: all of them).")


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


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
