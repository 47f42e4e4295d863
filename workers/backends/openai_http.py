"""The OpenAI-compatible HTTP backend: a model served elsewhere (vLLM server, llama.cpp server,
a hosted API), reached over ``/v1/chat/completions`` or, for ``prompt_format = "completion"``
models, ``/v1/completions``.

A micro-batch is sent as concurrent requests, at most ``spec.concurrency`` in flight per worker
process: the server batches them (vLLM, hosted APIs), and the worker's wall time is that of the
slowest request rather than the sum. Prompts are built by ``prompts.py`` exactly as for the
local backends, so a model answers the same job the same way wherever it is hosted.

Failures: 429, 408/409, 5xx and lost connections are retried with backoff (``http_retry``); a
read timeout is not (a request that hung once would hang again and hold the batch), it fails
the attempt and the job goes back to the scheduler. Any other 4xx is the job's own fault and
fails it for good with the server's message.
"""
from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from pydantic import Field

from scheduler.errors import BackendError, FleetFileError, PermanentJobError, PromptTooLong
from scheduler.fleet import ModelSpec, PromptFormat
from scheduler.settings import Settings
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.backends.http_retry import RetryPolicy, backoff_s, is_retryable_status, retry_after_s
from workers.backends.options import parse_options
from workers.backends.prompts import COMPLETION_STOP, completion_prompt, request_messages

DEFAULT_SEED = 1234  # the llama.cpp backend's seed: sampled answers reproducible where servers honour it
USER_AGENT = "switchyard"

# Connection-level failures after which the request can simply be sent again.
_RETRYABLE_ERRORS = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError,
    httpx.ReadError, httpx.WriteError, httpx.WriteTimeout,
)
# How servers word "your prompt does not fit" (OpenAI, vLLM, llama.cpp server).
_CONTEXT_OVERFLOW = re.compile(r"context (length|window)|maximum context|too long|exceeds? .*context", re.IGNORECASE)


class EndpointOptions(RetryPolicy):
    """``[models.options]`` of an ``openai`` fleet entry: the retry policy plus timeouts."""

    connect_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Time to open a connection.")
    read_timeout_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="Longest wait for the server's answer to one request; the model's job_timeout_s if unset.",
    )


class OpenAIHttpBackend(Backend):
    """A model behind an OpenAI-compatible endpoint. Thread-safe."""

    # The runner claims the whole micro-batch so that its requests can be in flight together.
    batches_natively = True

    def __init__(self, spec: ModelSpec, *, api_key: str | None = None,
                 options: EndpointOptions | None = None, seed: int = DEFAULT_SEED,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        if not spec.endpoint_url:
            raise FleetFileError(f"model {spec.name!r}: the openai backend needs endpoint_url in the fleet file")
        self.spec = spec
        self.options = options or EndpointOptions()
        self.seed = seed
        self._sleep = sleep
        self._rng = rng or random.Random()
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.read_timeout_s = self.options.read_timeout_s or spec.job_timeout_s
        timeout = httpx.Timeout(self.read_timeout_s, connect=self.options.connect_timeout_s)
        # One connection per in-flight request: the pool never makes a request wait for a socket.
        limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
        self._client: httpx.Client | None = httpx.Client(
            base_url=spec.endpoint_url, headers=headers, timeout=timeout, limits=limits)
        self._pool = ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix=f"{spec.name}-http")

    @classmethod
    def from_settings(cls, spec: ModelSpec, settings: Settings) -> OpenAIHttpBackend:
        """Options from the fleet entry; the API key from ``settings.endpoint_api_keys[spec.name]``."""
        return cls(spec, api_key=api_key_for(spec, settings), options=parse_options(spec, EndpointOptions))

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if request.max_tokens < 1:
            raise PermanentJobError(f"job {request.job_id}: max_tokens must be at least 1")
        path, body = self._payload(request)
        started = time.perf_counter()
        data = self._post(request.job_id, path, body)
        return self._result(request.job_id, data, time.perf_counter() - started)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        """The micro-batch's requests concurrently (``spec.concurrency`` at most), results in order."""
        if len(requests) <= 1 or self._client is None:  # closed: generate says so per job
            return super().generate_batch(requests)
        futures = [self._pool.submit(self._generate_or_error, request) for request in requests]
        return [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _generate_or_error(self, request: GenerationRequest) -> GenerationResult | Exception:
        try:
            return self.generate(request)
        except Exception as exc:  # noqa: BLE001 - returned per job, never lost
            return exc

    def _payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        messages = request_messages(request, self.spec.system_prompt)
        body: dict[str, Any] = {
            "model": self.spec.weights, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "seed": self.seed, "stream": False,
        }
        if self.spec.prompt_format is PromptFormat.COMPLETION:
            body["prompt"] = completion_prompt(messages)
            body["stop"] = list(request.stop) + list(COMPLETION_STOP)
            return "completions", body
        body["messages"] = messages
        if request.stop:
            body["stop"] = list(request.stop)
        return "chat/completions", body

    def _post(self, job_id: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; the decoded JSON answer, or a BackendError / PermanentJobError."""
        where = f"job {job_id} on {self.spec.name!r} ({self.spec.endpoint_url}/{path})"
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            try:
                response = self._open_client().post(path, json=body)
            except httpx.ReadTimeout as exc:
                raise BackendError(f"{where}: no answer within {self.read_timeout_s:g}s") from exc
            except _RETRYABLE_ERRORS as exc:
                failure, server_wait_s = f"{type(exc).__name__}: {exc}", None
            except httpx.HTTPError as exc:
                raise BackendError(f"{where}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.is_success:
                    return _json(response, where)
                message = _server_message(response)
                if not is_retryable_status(response.status_code):
                    error = PromptTooLong if _CONTEXT_OVERFLOW.search(message) else PermanentJobError
                    raise error(f"{where}: HTTP {response.status_code}: {message}")
                failure = f"HTTP {response.status_code}: {message}"
                server_wait_s = retry_after_s(response.headers, dt.datetime.now(dt.UTC))
            if attempt + 1 < attempts:
                self._sleep(backoff_s(attempt, server_wait_s, self.options, self._rng))
        raise BackendError(f"{where}: gave up after {attempts} attempts; last: {failure}")

    def _open_client(self) -> httpx.Client:
        if self._client is None:
            raise BackendError(f"model {self.spec.name!r}: the backend is closed")
        return self._client

    def _result(self, job_id: str, data: dict[str, Any], latency_s: float) -> GenerationResult:
        completion = self.spec.prompt_format is PromptFormat.COMPLETION
        try:
            choice, usage = data["choices"][0], data["usage"]
            text = choice["text"] if completion else choice["message"].get("content")
            input_tokens, output_tokens = int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise BackendError(
                f"job {job_id} on {self.spec.name!r}: the endpoint's answer lacks choices or usage "
                f"(token counts are needed for cost): {json.dumps(data)[:300]}"
            ) from exc
        text = text or ""
        return GenerationResult(
            # the completion frame puts the answer after "Answer:", so it starts with a space
            text=text.strip() if completion else text,
            # "content_filter"/"tool_calls" end the answer as "stop" does; only "length" is cut short
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            input_tokens=input_tokens, output_tokens=output_tokens, latency_s=latency_s,
        )


def api_key_for(spec: ModelSpec, settings: Settings) -> str | None:
    """The key for ``spec``'s endpoint, if settings has one (``SWITCHYARD_ENDPOINT_API_KEYS``)."""
    key = settings.endpoint_api_keys.get(spec.name)
    return key.get_secret_value() if key is not None else None


def _json(response: httpx.Response, where: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise BackendError(f"{where}: the endpoint answered with invalid JSON: {response.text[:300]}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"{where}: the endpoint answered with {type(data).__name__}, not an object")
    return data


def _server_message(response: httpx.Response) -> str:
    """The error text of an OpenAI-style (``error.message``), vLLM (``message``) or FastAPI
    (``detail``) error body, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for key in ("error", "message", "detail"):
            if body.get(key):
                return str(body[key])[:500]
    return json.dumps(body)[:500]
