"""An OpenAI ``/v1/chat/completions`` or ``/v1/completions`` request body, as a Switchyard job.

One mapping, used by the interactive endpoints and by every line of a batch input file:

- ``model``: ``"auto"`` lets the scheduler choose among the fleet (or among
  ``switchyard.allowed_models``); a fleet model's name pins the job to it; anything else is
  ``model_not_found``.
- ``messages`` (chat: roles system, developer (read as system), user, assistant; content a string
  or a list of text parts) or ``prompt`` (completions: one string); ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``stop``, ``metadata`` become the job's fields.
  Unset, they take Switchyard's job defaults (max_tokens 256, temperature 0), not OpenAI's.
- ``switchyard``: Switchyard's extension (``SwitchyardOptions``): a per-request quality floor,
  cost cap, allow-list for ``auto``, and a reference answer to grade against.
- Fields that would change the answer and that Switchyard's workers cannot honour (``n``,
  ``top_p``, penalties, ``logit_bias``, ``logprobs``, tools, a non-text ``response_format``...)
  are accepted only at their neutral value (``NEUTRAL_VALUES``); any other value is
  ``unsupported_parameter``. Fields that do not change the answer are ignored
  (``IGNORED_FIELDS``). Any other field is ``unknown_parameter``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler.errors import InvalidRequest, NotFound
from scheduler.fleet import Fleet
from scheduler.grading import Grader
from scheduler.jobspec import JobSpec, RequestModel, StorableJsonObject, StorableText
from scheduler.settings import Settings

AUTO_MODEL = "auto"
CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS)

# Fields that do not change the text a model writes: billing, logging, caching, latency hints,
# tool-call plumbing (tools themselves are refused below), and knobs of models the fleet does not
# have. `seed` is a best-effort hint in OpenAI's API too: an answer sampled without it is still a
# valid answer to the request.
IGNORED_FIELDS = frozenset({
    "user", "seed", "store", "service_tier", "parallel_tool_calls", "tool_choice", "function_call",
    "stream_options", "prompt_cache_key", "safety_identifier", "reasoning_effort", "verbosity", "prediction",
})
# Fields that change the answer, accepted only at the value that changes nothing (null always
# counts as unset): the workers generate one plain-text choice per request with their own sampler.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,), "best_of": (1,), "top_p": (1,), "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": ({},), "logprobs": (False,), "top_logprobs": (0,), "echo": (False,), "suffix": ("",),
    "response_format": ({"type": "text"},), "tools": ([],), "functions": ([],), "modalities": (["text"],),
    "audio": (), "web_search_options": (),
}


class OpenAIRequestError(InvalidRequest):
    """An OpenAI request body Switchyard cannot run as sent (422; in a batch input file, the
    line's error). ``code`` and ``param`` are what OpenAI's errors carry."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


class ModelNotFound(NotFound):
    """The request names a model that is neither ``auto`` nor in the fleet (404, as OpenAI answers)."""

    code = "model_not_found"
    param = "model"


class SwitchyardOptions(RequestModel):
    """Switchyard's extension of an OpenAI request body, sent as its ``"switchyard"`` field."""

    min_quality: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "Floor on the predicted chance of a good answer: only models predicted at least this good may run "
        "it."))
    max_cost_usd: float | None = Field(default=None, gt=0.0, description="Most this one request may cost.")
    allowed_models: list[StorableText] | None = Field(default=None, min_length=1, max_length=64, description=(
        "With model \"auto\": the fleet models the scheduler may choose from."))
    reference: StorableText | None = Field(default=None, min_length=1, max_length=10_000, description=(
        "A correct answer; the worker grades the result against it (an outcome label the predictor learns "
        "from)."))
    grader: Grader | None = Field(default=None,
                                  description="How to grade against reference (default contains).")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text"]
    text: StorableText


class OpenAIChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: StorableText | list[TextPart]
    name: StorableText | None = Field(default=None, description="Accepted and ignored.")


class OpenAIBody(BaseModel):
    """What chat and text completion requests share. Other fields are kept (``extra="allow"``)
    and judged by ``NEUTRAL_VALUES`` and ``IGNORED_FIELDS``."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    model: StorableText = Field(description='"auto" (the scheduler chooses) or a fleet model name.')
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate (default 256).")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Default 0.")
    stop: StorableText | list[StorableText] | None = None
    stream: bool | None = Field(default=None, description="Only false: results are written whole.")
    metadata: StorableJsonObject | None = Field(default=None, description="Stored as the job's metadata.")
    switchyard: SwitchyardOptions | None = None


class ChatCompletionRequest(OpenAIBody):
    messages: list[OpenAIChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The same as max_tokens.")


class CompletionRequest(OpenAIBody):
    prompt: StorableText | list[StorableText] = Field(
        description="One prompt (or a list of exactly one string).")


REQUEST_OF_ENDPOINT: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    CHAT_COMPLETIONS: ChatCompletionRequest, COMPLETIONS: CompletionRequest}


def job_spec_from_request(body: ChatCompletionRequest | CompletionRequest, *, fleet: Fleet,
                          settings: Settings, now: dt.datetime, deadline: dt.datetime,
                          max_pending_s: float | None = None) -> JobSpec:
    """The job that answers ``body``: due by ``deadline`` (run late rather than not at all),
    pending at most ``max_pending_s`` (None: the server's setting). Raises OpenAIRequestError,
    ModelNotFound, or InvalidRequest (a limit of ``settings``)."""
    _refuse_unsupported(body)
    if body.stream:
        raise OpenAIRequestError("stream=true is not supported: Switchyard writes each answer whole; send "
                                 "stream=false", code="unsupported_parameter", param="stream")
    options = body.switchyard or SwitchyardOptions()
    fields: dict[str, Any] = {
        "max_tokens": _max_tokens(body), "temperature": body.temperature,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "allowed_models": _allowed_models(body.model, options, fleet), "min_quality": options.min_quality,
        "max_cost_usd": options.max_cost_usd, "reference": options.reference, "grader": options.grader,
        "metadata": body.metadata, "deadline": deadline, "on_deadline_miss": "run_late",
        "max_pending_s": max_pending_s,
    }
    if isinstance(body, ChatCompletionRequest):
        fields["messages"] = [_chat_message(message) for message in body.messages]
    else:
        fields["prompt"] = _one_prompt(body.prompt)
    try:
        spec = JobSpec(**{name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        param, message = first_validation_error(exc)
        raise OpenAIRequestError(message, param=param) from exc
    spec.check_against(settings, fleet, now)
    return spec


def first_validation_error(exc: ValidationError, *, under: str | None = None) -> tuple[str | None, str]:
    """(the field, a message naming it) of a validation error's first problem; ``under`` is the
    path of the validated object itself (``body`` for a batch line's body)."""
    first = exc.errors()[0]
    param = ".".join([*([under] if under else []), *(str(part) for part in first["loc"])]) or None
    message = first["msg"].removeprefix("Value error, ")
    return param, f"{param}: {message}" if param else message


def _refuse_unsupported(body: OpenAIBody) -> None:
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED_FIELDS:
            continue
        neutral = NEUTRAL_VALUES.get(name)
        if neutral is None:
            raise OpenAIRequestError(f"unknown parameter {name!r}", code="unknown_parameter", param=name)
        if value is not None and not any(_same_value(value, allowed) for allowed in neutral):
            raise OpenAIRequestError(
                f"{name}={value!r} is not supported: Switchyard's workers generate one plain-text answer "
                f"with their own sampler; leave {name} out" + (f" or send {neutral[0]!r}" if neutral else ""),
                code="unsupported_parameter", param=name)


def _same_value(value: Any, allowed: Any) -> bool:
    # In Python True == 1: a boolean matches only a boolean, so n=true is not read as n=1.
    if isinstance(value, bool) or isinstance(allowed, bool):
        return isinstance(value, bool) and isinstance(allowed, bool) and value == allowed
    return bool(value == allowed)


def _max_tokens(body: OpenAIBody) -> int | None:
    if not isinstance(body, ChatCompletionRequest) or body.max_completion_tokens is None:
        return body.max_tokens
    if body.max_tokens is not None and body.max_tokens != body.max_completion_tokens:
        raise OpenAIRequestError("max_tokens and max_completion_tokens differ; send one of them",
                                 param="max_completion_tokens")
    return body.max_completion_tokens


def _allowed_models(model: str, options: SwitchyardOptions, fleet: Fleet) -> list[str] | None:
    """None: any fleet model (``auto``); else the models the job may run on."""
    if model == AUTO_MODEL:
        for name in options.allowed_models or []:
            if name not in fleet.names:
                raise OpenAIRequestError(f"switchyard.allowed_models: unknown model {name!r}; the fleet has: "
                                         f"{', '.join(fleet.names)}", code="model_not_found",
                                         param="switchyard.allowed_models")
        return options.allowed_models
    if model not in fleet.names:
        raise ModelNotFound(f"the model {model!r} does not exist; use \"auto\" (the scheduler chooses) or "
                            f"one of the fleet's: {', '.join(fleet.names)}")
    if options.allowed_models is not None:
        raise OpenAIRequestError(f"switchyard.allowed_models goes with model \"auto\"; model {model!r} "
                                 "already pins the request to one model", param="switchyard.allowed_models")
    return [model]


def _chat_message(message: OpenAIChatMessage) -> dict[str, str]:
    """A job's message (JobSpec validates it, so an error names ``messages.N.content``)."""
    content = (message.content if isinstance(message.content, str)
               else "\n".join(part.text for part in message.content))
    # OpenAI's "developer" role is what "system" was before reasoning models: instructions.
    return {"role": "system" if message.role == "developer" else message.role, "content": content}


def _one_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise OpenAIRequestError(f"prompt holds {len(prompt)} prompts; send one prompt per request (each "
                                 "Switchyard request returns one completion)", param="prompt")
    return prompt[0]
