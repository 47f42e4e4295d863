"""The echo backend: a test double of a model, for load tests and smoke tests of the whole system.

It answers each job with the job's own prompt (or its last user message), so a run through the
real scheduler, broker, workers and database costs only Switchyard's own overhead plus an
optional delay per job, and every answer can be checked against its job. It is not a model: no
quality is measured by running it, and a test that claims to test a model must not use it.

Token counts are whitespace-separated words (there is no tokenizer); the answer is cut after
``max_tokens`` words (finish reason ``length``). Stop sequences, temperature and the fleet
entry's ``system_prompt`` are ignored.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from scheduler.errors import PermanentJobError
from scheduler.fleet import ModelSpec
from scheduler.settings import Settings
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.backends.options import parse_options

_WORD = re.compile(r"\S+")


class EchoOptions(BaseModel):
    """``[models.options]`` of an ``echo`` fleet entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = Field(
        default=0.0, ge=0, le=3600,
        description="Seconds each job takes, slept before answering (jobs of a micro-batch run back to back).",
    )


class EchoBackend(Backend):
    """Answers each request with its own text. Thread-safe (it holds no state)."""

    def __init__(self, spec: ModelSpec, options: EchoOptions | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self.options = options or EchoOptions()
        self._sleep = sleep

    @classmethod
    def from_settings(cls, spec: ModelSpec, settings: Settings) -> EchoBackend:
        """Nothing to load: the fleet entry's ``weights`` is not read."""
        return cls(spec, parse_options(spec, EchoOptions))

    def generate(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        if request.max_tokens < 1:
            raise PermanentJobError(f"job {request.job_id}: max_tokens must be at least 1")
        question, read = _question(request)
        if self.options.delay_s:
            self._sleep(self.options.delay_s)
        words = list(_WORD.finditer(question))
        if len(words) > request.max_tokens:
            # Cut where the last allowed word ends, keeping the question's own spacing.
            answer, finish_reason = question[:words[request.max_tokens - 1].end()], "length"
        else:
            answer, finish_reason = question, "stop"
        return GenerationResult(text=answer, finish_reason=finish_reason, input_tokens=_word_count(read),
                                output_tokens=min(len(words), request.max_tokens),
                                latency_s=time.perf_counter() - started)


def _question(request: GenerationRequest) -> tuple[str, str]:
    """What to echo, and everything the 'model' read (for the input token count)."""
    if request.messages:
        # As for the real backends, messages win over a prompt.
        user_turns = [message["content"] for message in request.messages if message.get("role") == "user"]
        if not user_turns:
            raise PermanentJobError(f"job {request.job_id}: the messages have no user turn to echo")
        return user_turns[-1], "\n".join(message["content"] for message in request.messages)
    if request.prompt:
        return request.prompt, request.prompt
    raise PermanentJobError(f"job {request.job_id}: the request has neither a prompt nor messages")


def _word_count(text: str) -> int:
    return len(text.split())
