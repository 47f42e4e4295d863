"""What a user submits: one job or a batch of jobs, validated before anything is written.

Static bounds live on the fields; limits that depend on settings or on the fleet (longest
prompt, largest max_tokens, known model names) are checked by ``check_against``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.errors import InvalidRequest, UnknownModel
from scheduler.fleet import Fleet
from scheduler.grading import Grader
from scheduler.settings import Settings

IdempotencyKey = Field(default=None, min_length=1, max_length=128,
                       description="A repeated submit with the same key returns the same object.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class JobSpec(BaseModel):
    """One prompt (plain text or chat messages), how to generate it, and its constraints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = Field(default=None, description="Plain-text prompt; give this or messages.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    max_tokens: int = Field(default=256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[str] | None = Field(default=None, max_length=8)
    min_quality: float | None = Field(default=None, ge=0.0, le=1.0,
                                      description="Per-job floor on the predicted chance of a good answer.")
    deadline: dt.datetime | None = Field(default=None, description="Finish by this time (ISO 8601 with zone).")
    allowed_models: list[str] | None = Field(default=None, min_length=1, max_length=64)
    max_cost_usd: float | None = Field(default=None, gt=0.0)
    on_deadline_miss: Literal["run_late", "expire"] = Field(
        default="run_late", description="When no model can meet the deadline: run on the fastest model "
        "(flagged) or expire the job.")
    reference: str | None = Field(default=None, min_length=1, max_length=10_000,
                                  description="A correct answer; the worker grades the result against it.")
    grader: Grader | None = Field(default=None, description="How to grade against reference (default contains).")
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = IdempotencyKey

    @model_validator(mode="after")
    def _one_prompt(self) -> JobSpec:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("'messages' needs at least one user message")
        if self.grader is not None and self.reference is None:
            raise ValueError("'grader' needs a 'reference' answer to grade against")
        return self

    @field_validator("deadline")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("'deadline' needs a time zone, e.g. 2026-01-01T12:00:00Z")
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not s for s in value):
            raise ValueError("'stop' strings must be non-empty")
        return value

    def prompt_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])

    def request_hash(self) -> str:
        """Fingerprint of everything but the idempotency key, to spot a key reused for other work."""
        payload = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def check_against(self, settings: Settings, fleet: Fleet, now: dt.datetime) -> None:
        """Limits that depend on configuration; raises InvalidRequest / UnknownModel."""
        if self.prompt_chars() > settings.max_prompt_chars:
            raise InvalidRequest(f"prompt has {self.prompt_chars()} characters; the limit is "
                                 f"{settings.max_prompt_chars}")
        if self.max_tokens > settings.max_tokens_limit:
            raise InvalidRequest(f"max_tokens={self.max_tokens} is above the limit {settings.max_tokens_limit}")
        for name in self.allowed_models or []:
            fleet.get(name)  # raises UnknownModel naming the fleet
        if self.deadline is not None and self.deadline <= now:
            raise InvalidRequest(f"deadline {self.deadline.isoformat()} is already past")


class BatchSpec(BaseModel):
    """Many jobs in one call: written all together or not at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jobs: list[JobSpec] = Field(min_length=1)
    name: str | None = Field(default=None, max_length=200)
    alpha: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="Mean predicted quality the batch's scheduled jobs must reach.")
    max_cost_usd: float | None = Field(default=None, gt=0.0, description="Spend cap for the whole batch.")
    idempotency_key: str | None = IdempotencyKey

    def request_hash(self) -> str:
        payload = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def check_against(self, settings: Settings, fleet: Fleet, now: dt.datetime) -> None:
        if len(self.jobs) > settings.max_jobs_per_request:
            raise InvalidRequest(f"{len(self.jobs)} jobs in one request; the limit is "
                                 f"{settings.max_jobs_per_request}")
        keys = [job.idempotency_key for job in self.jobs if job.idempotency_key]
        if len(keys) != len(set(keys)):
            raise InvalidRequest("two jobs in the batch share an idempotency_key")
        for index, job in enumerate(self.jobs):
            try:
                job.check_against(settings, fleet, now)
            except InvalidRequest as exc:
                raise type(exc)(f"jobs[{index}]: {exc}") from exc


__all__ = ["BatchSpec", "ChatMessage", "JobSpec", "UnknownModel"]
