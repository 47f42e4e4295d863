"""Finished jobs in OpenAI's shapes: a ``chat.completion`` or ``text_completion`` object, and a
line of a batch's output or error file.

A job with ``messages`` answers as a chat completion, one with a ``prompt`` as a text
completion, whichever endpoint created it (an inline batch mixes both). ``model`` is the model
that answered. Ids trace back to the job: ``chatcmpl-<job id>``, ``cmpl-<job id>``, and a batch
line's ``batch_req_<job id>`` with ``request_id`` = the job id.

Output lines follow OpenAI's Batch API: a succeeded job is ``{"id", "custom_id", "response":
{"status_code": 200, "request_id", "body": <completion>}, "error": null}`` (the output file).
The error file holds the rest: a failed job as the HTTP error the request got
(``response.status_code`` 4xx/5xx, ``body.error`` with message, type, param, code; ``error``
null), and a job that never ran as ``response: null`` with ``error: {"code": "batch_expired" |
"batch_cancelled", "message"}``, as OpenAI writes requests its batch expired or cancelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from scheduler.storage.tables import Job
from scheduler.storage.types import JobStatus


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    system_fingerprint: None = None


def completion_of(job: Job) -> ChatCompletion | TextCompletion:
    """A succeeded job's answer."""
    created = int((job.finished_at or job.created_at).timestamp())
    prompt_tokens, completion_tokens = job.input_tokens or 0, job.output_tokens or 0
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                  total_tokens=prompt_tokens + completion_tokens)
    text, finish_reason, model = job.result_text or "", job.finish_reason or "stop", job.assigned_model or ""
    if job.messages is not None:
        return ChatCompletion(id=f"chatcmpl-{job.id}", created=created, model=model, usage=usage, choices=[
            ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)])
    return TextCompletion(id=f"cmpl-{job.id}", created=created, model=model, usage=usage,
                          choices=[TextChoice(text=text, finish_reason=finish_reason)])


@dataclass(frozen=True)
class JobFailure:
    """Why a final job has no answer, as the HTTP error its request gets."""

    status_code: int
    type: str          # OpenAI's error type
    code: str
    message: str


# Errors a worker records as "<exception class>: <message>" (workers/runner.py) that mean the
# request can never succeed as sent: a 4xx, not a fault of Switchyard's.
_PERMANENT_ERRORS = {"PromptTooLong:": "context_length_exceeded", "PermanentJobError:": "invalid_request"}


def failure_of(job: Job) -> JobFailure:
    """A failed, expired or cancelled job's error."""
    error = job.error or ""
    if job.status == JobStatus.CANCELLED:
        return JobFailure(409, "invalid_request_error", "batch_cancelled",
                          error or "the request was cancelled")
    if job.status == JobStatus.EXPIRED:
        return JobFailure(503, "server_error", "batch_expired",
                          error or "the request was not run before its completion window ended")
    if job.attempts == 0:   # failed without a run: the tick found no fleet model that can ever serve it
        return JobFailure(422, "invalid_request_error", "no_model_can_serve", error)
    for prefix, code in _PERMANENT_ERRORS.items():
        if error.startswith(prefix):
            return JobFailure(422, "invalid_request_error", code, error)
    return JobFailure(502, "server_error", "model_error", error or "the model failed")


def output_line(job: Job) -> tuple[bool, dict[str, Any]]:
    """(answered, the job's line): the output file's line when answered, else the error file's."""
    custom_id = job.custom_id or job.id    # inline jobs have no custom_id: their job id stands in
    line: dict[str, Any] = {"id": f"batch_req_{job.id}", "custom_id": custom_id, "response": None,
                            "error": None}
    if job.status == JobStatus.SUCCEEDED:
        line["response"] = {"status_code": 200, "request_id": job.id, "body": completion_of(job).model_dump()}
        return True, line
    failure = failure_of(job)
    if job.status in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        line["error"] = {"code": failure.code, "message": failure.message}
    else:
        line["response"] = {"status_code": failure.status_code, "request_id": job.id, "body": {"error": {
            "message": failure.message, "type": failure.type, "param": None, "code": failure.code}}}
    return False, line
