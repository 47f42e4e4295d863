"""What a user submits: one job or a batch of jobs, validated before anything is written.

Static bounds live on the fields; limits that depend on settings or on the fleet (longest
prompt, largest max_tokens, known model names) are checked by ``check_against``.

Everything a user sends must also be storable: every text field is ``StorableText`` (no NUL,
no lone surrogate: Postgres text cannot hold either), every float is finite
(``allow_inf_nan=False``: Python's json parser accepts ``NaN``, ``Infinity`` and ``1e999``), and
``metadata`` is checked the same way all the way down by ``check_storable_json``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from scheduler.errors import InvalidRequest, UnknownModel
from scheduler.fleet import Fleet
from scheduler.grading import Grader
from scheduler.settings import Settings

# A validation error found inside a field (a metadata value) carries its position below the
# field in ctx[INNER_LOC]; the API appends it to the error's loc so the message names it.
INNER_LOC = "inner_loc"
MAX_METADATA_DEPTH = 32
MAX_PENDING_S_LIMIT = 366 * 86_400


def escape_unprintable(text: str) -> str:
    """``text`` with control characters, lone surrogates and other unprintable characters written
    as escapes (``\\u0000``), so that it can be shown in a message, and encoded as UTF-8 at all."""
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def unstorable_reason(text: str) -> str | None:
    """Why the database cannot store ``text`` (None when it can)."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    if text.isascii():  # the common case, without encoding a copy: ASCII has no surrogates
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # only a surrogate without its pair cannot be encoded
        return f"contains a lone surrogate ({_escape(text[exc.start])}), which cannot be stored"
    return None


def _storable(text: str) -> str:
    reason = unstorable_reason(text)
    if reason is not None:
        raise PydanticCustomError("unstorable_text", reason)
    return text


# The one type for every text field a user can send (fields, list items, query and path values).
StorableText = Annotated[str, AfterValidator(_storable)]


def _json_problems(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(position, problem) for every part of a parsed JSON value the database cannot store."""
    if len(path) > MAX_METADATA_DEPTH:
        yield path, f"is nested deeper than {MAX_METADATA_DEPTH} levels"
    elif isinstance(value, str):
        if (reason := unstorable_reason(value)) is not None:
            yield path, reason
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield path, "is not a finite number (NaN and Infinity cannot be stored)"
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_problems(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            if (reason := unstorable_reason(key)) is not None:
                yield (*path, escape_unprintable(key)), f"the key {reason}"
            else:
                yield from _json_problems(item, (*path, key))


def _is_storable_json(value: Any, depth: int) -> bool:
    """Whether ``_json_problems`` would find nothing: the same checks without building paths, for
    the common case (a 10,000-job batch checks every job's metadata)."""
    if depth > MAX_METADATA_DEPTH:
        return False
    if isinstance(value, str):
        return unstorable_reason(value) is None
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        for item in value:
            if not _is_storable_json(item, depth + 1):
                return False
    elif isinstance(value, dict):
        for key, item in value.items():
            if unstorable_reason(key) is not None or not _is_storable_json(item, depth + 1):
                return False
    return True


def check_storable_json(value: Any) -> Any:
    """Free-form JSON (``metadata``) must be storable all the way down: text as ``StorableText``,
    numbers finite, nesting bounded."""
    if _is_storable_json(value, 0):
        return value
    first = next(_json_problems(value, ()), None)
    if first is not None:
        path, problem = first
        raise PydanticCustomError("unstorable_json", problem, {INNER_LOC: path})
    return value


StorableJsonObject = Annotated[dict[str, Any], AfterValidator(check_storable_json)]

IdempotencyKey = Field(default=None, min_length=1, max_length=128,
                       description="A repeated submit with the same key returns the same object.")


def _max_pending_field(default_text: str) -> Any:
    return Field(default=None, ge=1, le=MAX_PENDING_S_LIMIT, description=(
        f"Seconds a job may stay pending before it ends 'expired' (default: {default_text}). A deadline "
        "later than the expiry is allowed: the job expires first."))


# Fields added after the first release: left out of the request hash while unset, so a retry
# that spans an upgrade still matches what its first attempt created.
_HASHED_ONLY_WHEN_SET = ("max_pending_s", "cascade")


def _request_payload(spec: BaseModel) -> dict[str, Any]:
    """What a request's fingerprint covers: everything but its (top-level) idempotency key."""
    payload = spec.model_dump(mode="json", exclude={"idempotency_key"})
    for fields in (payload, *payload.get("jobs", ())):  # the request, and a batch's jobs
        for name in _HASHED_ONLY_WHEN_SET:
            if name in fields and fields[name] is None:
                del fields[name]
    return payload


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True)   # writes what json.dumps(value, sort_keys=True) writes


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(_CANONICAL_JSON.encode(payload).encode()).hexdigest()


def _request_hash(spec: BaseModel) -> str:
    """Fingerprint of everything but the (top-level) idempotency key, to spot a key reused for
    other work."""
    return _fingerprint(_request_payload(spec))


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are an error, and a float must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _storable_field_names(cls, data: Any) -> Any:
        # Pydantic cannot even read a field name holding a lone surrogate (it reports "unable to
        # parse raw data" about the whole body); name the field here instead.
        for name in data if isinstance(data, dict) else ():
            if isinstance(name, str) and (reason := unstorable_reason(name)) is not None:
                raise PydanticCustomError("unstorable_text", f"the field name {reason}",
                                          {INNER_LOC: (escape_unprintable(name),)})
        return data


# One of prompt / messages, stated in the OpenAPI schema for client generators. A branch also
# pins its field's type, so an explicit ``"prompt": null`` beside messages still matches one.
ONE_PROMPT_SCHEMA: dict[str, Any] = {"oneOf": [
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]}


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant"]
    content: StorableText = Field(min_length=1)


class JobSpec(RequestModel):
    """One prompt (plain text or chat messages), how to generate it, and its constraints."""

    model_config = ConfigDict(json_schema_extra=ONE_PROMPT_SCHEMA)

    prompt: StorableText | None = Field(default=None, description="Plain-text prompt; give this or messages.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    max_tokens: int = Field(default=256, ge=1, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    stop: list[StorableText] | None = Field(default=None, max_length=8)
    min_quality: float | None = Field(default=None, ge=0.0, le=1.0,
                                      description="Per-job floor on the predicted chance of a good answer.")
    deadline: dt.datetime | None = Field(default=None, description="Finish by this time (ISO 8601 with zone).")
    allowed_models: list[StorableText] | None = Field(default=None, min_length=1, max_length=64)
    max_cost_usd: float | None = Field(default=None, gt=0.0)
    on_deadline_miss: Literal["run_late", "expire"] = Field(
        default="run_late", description="When no model can meet the deadline: run on the fastest model "
        "(flagged) or expire the job.")
    max_pending_s: float | None = _max_pending_field("the batch's max_pending_s, else the server's setting")
    reference: StorableText | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="A correct answer; the worker grades the result against it.")
    grader: Grader | None = Field(default=None, description="How to grade against reference (default contains).")
    metadata: StorableJsonObject | None = None
    idempotency_key: StorableText | None = IdempotencyKey
    cascade: bool | None = Field(
        default=None, description="Whether the scheduler may run a cheap model first and, when its answer is "
        "judged weak, escalate to a stronger one (every attempt is kept and shown). false: one model, its answer "
        "accepted as it is. Default: the batch's cascade, else true.")

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
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("'deadline' needs a time zone, e.g. 2026-01-01T12:00:00Z")
        try:
            value.astimezone(dt.UTC)  # stored in UTC: 9999-12-31T23:00-05:00 has no UTC time
        except OverflowError as exc:
            raise ValueError("'deadline' is out of range") from exc
        return value  # as given: the request hash of an idempotent retry must not change

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
        return _request_hash(self)

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


class BatchHashes:
    """A batch's request hash and each job's (``JobSpec.request_hash``), from one dump of the
    batch, each computed when first asked for: a job's is its part of the batch's payload without
    its idempotency key."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self._payload = payload

    @cached_property
    def batch(self) -> str:
        return _fingerprint(self._payload)

    def job(self, index: int) -> str:
        fields = dict(self._payload["jobs"][index])
        del fields["idempotency_key"]
        return _fingerprint(fields)


class BatchSpec(RequestModel):
    """Many jobs in one call: written all together or not at all."""

    jobs: list[JobSpec] = Field(min_length=1)
    name: StorableText | None = Field(default=None, max_length=200)
    alpha: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="Mean predicted quality the batch's jobs must reach, over all the jobs "
                                            "it dispatches.")
    max_cost_usd: float | None = Field(default=None, gt=0.0, description="Spend cap for the whole batch.")
    max_pending_s: float | None = _max_pending_field("the server's setting; a job's own max_pending_s wins")
    idempotency_key: StorableText | None = IdempotencyKey
    cascade: bool | None = Field(
        default=None, description="Whether its jobs may cascade (a job's own cascade wins; default true).")

    def request_hash(self) -> str:
        return _request_hash(self)

    def request_hashes(self) -> BatchHashes:
        """The batch's request hash and its jobs' from one dump of the batch."""
        return BatchHashes(_request_payload(self))

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


__all__ = ["BatchSpec", "ChatMessage", "JobSpec", "RequestModel", "StorableText", "UnknownModel", "unstorable_reason"]
