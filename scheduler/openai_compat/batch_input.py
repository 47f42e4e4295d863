"""Creating a batch: the ``POST /v1/batches`` body, and a batch input file read line by line.

One body, discriminated by its fields: ``input_file_id`` makes an OpenAI batch of the requests
in an uploaded JSONL file; ``jobs`` is Switchyard's extension, the jobs inline. Each mode's own
fields are refused in the other, so a request means one thing.

An input file is OpenAI's: one JSON object per line, ``{"custom_id", "method": "POST", "url":
<the batch's endpoint>, "body": <a request body>}``, each body mapped by ``bodies``. A file with
any bad line makes the batch ``failed``, with one error per bad line in OpenAI's shape (the
first ``MAX_REPORTED_ERRORS``; then one error saying how many more).

Switchyard's batch-level extension rides in ``metadata`` (what the OpenAI client can send):
``switchyard_alpha`` (the batch's mean quality target) and ``switchyard_max_cost_usd`` (its
spend cap), as decimal strings.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from scheduler.errors import InvalidRequest, NotFound
from scheduler.fleet import Fleet
from scheduler.jobspec import (
    MAX_PENDING_S_LIMIT, BatchSpec, JobSpec, RequestModel, StorableText, escape_unprintable,
    unstorable_reason,
)
from scheduler.openai_compat.bodies import (
    ENDPOINTS, REQUEST_OF_ENDPOINT, first_validation_error, job_spec_from_request,
)
from scheduler.settings import Settings

COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
MAX_REPORTED_ERRORS = 100
MAX_CUSTOM_ID_CHARS = 512            # the jobs.custom_id column
LINE_FIELDS = ("custom_id", "method", "url", "body")
# OpenAI's metadata limits.
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512
SWITCHYARD_METADATA_PREFIX = "switchyard_"
ALPHA_KEY, MAX_COST_KEY = "switchyard_alpha", "switchyard_max_cost_usd"
INLINE_ONLY_FIELDS = ("name", "alpha", "max_cost_usd", "max_pending_s", "idempotency_key")
FILE_ONLY_FIELDS = ("endpoint", "completion_window", "metadata", "output_expires_after")


class BatchCreateRequest(RequestModel):
    """``input_file_id`` + ``endpoint`` + ``completion_window`` (+ ``metadata``): OpenAI's batch of
    an uploaded file. ``jobs`` (+ ``name``, ``alpha``, ``max_cost_usd``, ``max_pending_s``,
    ``idempotency_key``): Switchyard's inline jobs, written all together or not at all."""

    input_file_id: StorableText | None = Field(default=None,
                                               description="OpenAI: an uploaded file (purpose batch).")
    endpoint: StorableText | None = Field(default=None,
                                          description="OpenAI: /v1/chat/completions or /v1/completions.")
    completion_window: StorableText | None = Field(default=None, description='OpenAI: "24h".')
    metadata: dict[StorableText, StorableText] | None = Field(default=None, description=(
        f"OpenAI: up to {MAX_METADATA_KEYS} string pairs. Switchyard reads {ALPHA_KEY} (mean predicted "
        f"quality the batch must reach) and {MAX_COST_KEY} (spend cap), e.g. {{\"{ALPHA_KEY}\": \"0.4\"}}."))
    output_expires_after: dict[str, Any] | None = Field(default=None, description=(
        "OpenAI: accepted and ignored; output files are kept until deleted."))
    jobs: list[JobSpec] | None = Field(default=None, min_length=1,
                                       description="Switchyard: the jobs, inline.")
    name: StorableText | None = Field(default=None, max_length=200)
    alpha: float | None = Field(default=None, ge=0.0, le=1.0,
                                description="Mean predicted quality the batch's scheduled jobs must reach.")
    max_cost_usd: float | None = Field(default=None, gt=0.0, description="Spend cap for the whole batch.")
    max_pending_s: float | None = Field(default=None, ge=1, le=MAX_PENDING_S_LIMIT, description=(
        "Seconds a job may stay pending before it ends 'expired' (default: the server's setting; a job's own "
        "max_pending_s wins)."))
    idempotency_key: StorableText | None = Field(
        default=None, min_length=1, max_length=128,
        description="A repeated submit with the same key returns the same batch (inline jobs).")

    @field_validator("metadata")
    @classmethod
    def _openai_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds {len(value)} keys; the most is {MAX_METADATA_KEYS}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"metadata key {key!r}: keys hold at most {MAX_METADATA_KEY_CHARS} "
                                 f"characters and values at most {MAX_METADATA_VALUE_CHARS}")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> BatchCreateRequest:
        if (self.input_file_id is None) == (self.jobs is None):
            raise ValueError("give input_file_id (OpenAI: a batch of the requests in an uploaded file) or "
                             "jobs (Switchyard: the jobs inline), not both")
        if self.jobs is not None:
            wrong = [name for name in FILE_ONLY_FIELDS if getattr(self, name) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for a batch from an input_file_id")
            return self
        wrong = [name for name in INLINE_ONLY_FIELDS if getattr(self, name) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: only for a batch of inline jobs; a batch from an input "
                             f"file takes its quality target and spend cap as metadata {ALPHA_KEY} and "
                             f"{MAX_COST_KEY}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)} (got {self.endpoint!r})")
        if self.completion_window not in COMPLETION_WINDOWS:
            raise ValueError(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)} "
                             f"(got {self.completion_window!r})")
        return self

    def inline_batch(self) -> BatchSpec:
        """The inline mode as the store's BatchSpec (its request hash is the one earlier releases used)."""
        assert self.jobs is not None
        return BatchSpec(jobs=self.jobs, name=self.name, alpha=self.alpha, max_cost_usd=self.max_cost_usd,
                         max_pending_s=self.max_pending_s, idempotency_key=self.idempotency_key)

    def window_s(self) -> float:
        return COMPLETION_WINDOWS[self.completion_window or ""]


@dataclass(frozen=True)
class BatchOptions:
    """What Switchyard's metadata keys ask of a batch from an input file."""

    alpha: float | None = None
    max_cost_usd: float | None = None


def batch_options(metadata: dict[str, str] | None) -> BatchOptions:
    """Read Switchyard's keys from a batch's metadata; a key with Switchyard's prefix that it does
    not know (a typo) is an error rather than silently nothing."""
    metadata = metadata or {}
    unknown = [key for key in metadata if key.startswith(SWITCHYARD_METADATA_PREFIX)
               and key not in (ALPHA_KEY, MAX_COST_KEY)]
    if unknown:
        raise InvalidRequest(f"metadata.{unknown[0]}: unknown Switchyard key; the keys are {ALPHA_KEY} and "
                             f"{MAX_COST_KEY}")
    alpha = _number(metadata, ALPHA_KEY)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise InvalidRequest(f"metadata.{ALPHA_KEY}: must be between 0 and 1 (got {metadata[ALPHA_KEY]!r})")
    max_cost = _number(metadata, MAX_COST_KEY)
    if max_cost is not None and max_cost <= 0:
        raise InvalidRequest(f"metadata.{MAX_COST_KEY}: must be above 0 (got {metadata[MAX_COST_KEY]!r})")
    return BatchOptions(alpha=alpha, max_cost_usd=max_cost)


def _number(metadata: dict[str, str], key: str) -> float | None:
    if key not in metadata:
        return None
    try:
        value = float(metadata[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidRequest(f"metadata.{key}: must be a number written as a string, e.g. \"0.4\" "
                             f"(got {metadata[key]!r})")
    return value


@dataclass(frozen=True)
class LineError:
    """One problem of an input file, as OpenAI's batch ``errors.data`` items read."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_openai(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    spec: JobSpec


@dataclass(frozen=True)
class BatchInput:
    """The requests of a valid file; or, when ``errors`` is not empty, why the file is not valid."""

    requests: list[BatchRequest]
    errors: list[LineError]


def read_batch_input(content: bytes, endpoint: str, *, fleet: Fleet, settings: Settings, now: dt.datetime,
                     deadline: dt.datetime, max_pending_s: float) -> BatchInput:
    """Every line of ``content`` as a job due by ``deadline`` (the batch's completion window),
    or every bad line's error."""
    requests: list[BatchRequest] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    bad_lines = 0
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(requests) + bad_lines >= settings.max_batch_file_requests:
            errors.append(LineError(
                "too_many_requests", f"the file holds more than {settings.max_batch_file_requests} requests "
                "(max_batch_file_requests); split it into several batches", number))
            break
        try:
            request = _read_line(raw, endpoint, seen, fleet=fleet, settings=settings, now=now,
                                 deadline=deadline, max_pending_s=max_pending_s)
        except _BadLine as bad:
            bad_lines += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                # Escaped: the errors are stored, and a message may quote text the database cannot hold.
                errors.append(LineError(bad.code, escape_unprintable(bad.message), number,
                                        None if bad.param is None else escape_unprintable(bad.param)))
            continue
        seen.add(request.custom_id)
        requests.append(request)
    if bad_lines > MAX_REPORTED_ERRORS:
        errors.append(LineError("too_many_errors", f"{bad_lines - MAX_REPORTED_ERRORS} more lines have "
                                f"errors; only the first {MAX_REPORTED_ERRORS} are listed"))
    if not requests and not errors:
        errors.append(LineError("empty_file", "the input file holds no requests: one JSON object per line"))
    return BatchInput(requests if not errors else [], errors)


class _BadLine(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _read_line(raw: bytes, endpoint: str, seen: set[str], *, fleet: Fleet, settings: Settings,
               now: dt.datetime, deadline: dt.datetime, max_pending_s: float) -> BatchRequest:
    try:
        line = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _BadLine("invalid_json_line", f"the line is not UTF-8 text ({exc.reason})") from exc
    except ValueError as exc:   # json.JSONDecodeError, and NaN / Infinity
        raise _BadLine("invalid_json_line", f"the line is not valid JSON: {exc}") from exc
    if not isinstance(line, dict):
        raise _BadLine("invalid_json_line",
                       "the line must be a JSON object with custom_id, method, url and body")
    unknown = [key for key in line if key not in LINE_FIELDS]
    if unknown:
        raise _BadLine("invalid_request", f"unknown field {unknown[0]!r}; a line has "
                       f"{', '.join(LINE_FIELDS)}", str(unknown[0]))
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _BadLine("invalid_custom_id", "custom_id must be a non-empty string of at most "
                       f"{MAX_CUSTOM_ID_CHARS} characters", "custom_id")
    if (reason := unstorable_reason(custom_id)) is not None:
        raise _BadLine("invalid_custom_id", f"custom_id {reason}", "custom_id")
    if custom_id in seen:
        raise _BadLine("duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line; each "
                       "request needs its own", "custom_id")
    if line.get("method") != "POST":
        raise _BadLine("invalid_method", f"method must be \"POST\" (got {line.get('method')!r})", "method")
    if line.get("url") != endpoint:
        raise _BadLine("invalid_url", f"url must be the batch's endpoint {endpoint!r} "
                       f"(got {line.get('url')!r})", "url")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _BadLine("invalid_request", "body must be a JSON object: the request to run", "body")
    try:
        request = REQUEST_OF_ENDPOINT[endpoint].model_validate(body)
        spec = job_spec_from_request(request, fleet=fleet, settings=settings, now=now, deadline=deadline,
                                     max_pending_s=max_pending_s)
    except ValidationError as exc:
        param, message = first_validation_error(exc, under="body")
        raise _BadLine("invalid_request", message, param) from exc
    except (InvalidRequest, NotFound) as exc:  # OpenAIRequestError and ModelNotFound carry their code
        body_param: str | None = getattr(exc, "param", None)
        raise _BadLine(getattr(exc, "code", "invalid_request"), str(exc),
                       None if body_param is None else f"body.{body_param}") from exc
    return BatchRequest(custom_id, spec)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
