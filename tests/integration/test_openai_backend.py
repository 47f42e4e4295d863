"""The OpenAI-compatible HTTP backend against real servers.

Answers, usage and error bodies come from a real ``python -m llama_cpp.server`` serving the
default fleet's SmolLM2-135M (needs ``llama-cpp-python[server]``). Concurrency, timeouts and
retries are checked against a small scripted HTTP server started in the test (real sockets,
real HTTP): it answers what each test tells it to and records what it received and how many
requests were in flight at once.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
import pytest

from scheduler.errors import BackendError, FleetFileError, PermanentJobError, PromptTooLong
from scheduler.fleet import BackendKind, ModelSpec, PromptFormat, load_fleet
from scheduler.settings import Settings
from tests.conftest import free_port
from workers.backends import make_backend
from workers.backends.base import GenerationRequest, GenerationResult
from workers.backends.openai_http import EndpointOptions, OpenAIHttpBackend
from workers.backends.prompts import COMPLETION_STOP
from workers.model_files import resolve_weights

FRANCE = "What is the capital of France?"
SYSTEM = "You are a concise, helpful assistant. Answer in one or two sentences."
FAST_RETRIES = EndpointOptions(backoff_base_s=0.01, backoff_max_s=2.0, max_retries=3)


def ask(prompt: str | None = None, **kw: Any) -> GenerationRequest:
    return GenerationRequest(job_id="t", prompt=prompt, messages=kw.pop("messages", None), **kw)


def spec_for(url: str | None, **kw: Any) -> ModelSpec:
    fields: dict[str, Any] = {"name": "remote", "backend": BackendKind.OPENAI, "weights": "smollm2-135m",
                              "endpoint_url": url, "system_prompt": SYSTEM, "usd_per_mtok_input": 0.1,
                              "usd_per_mtok_output": 0.2} | kw
    return ModelSpec(**fields)


# --- a real llama.cpp server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app", reason="needs pip install 'llama-cpp-python[server]'")
    settings = Settings()
    weights = resolve_weights(load_fleet(settings.fleet_file).get("smollm2-135m"), settings)
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    # A file, not a pipe: the server logs more than a pipe buffer holds and would block on it.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(weights), "--model_alias", "smollm2-135m",
             "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048", "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"llama_cpp.server did not start within 120 s; see {log_path}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def remote(llama_server: str) -> Iterator[OpenAIHttpBackend]:
    backend = OpenAIHttpBackend(spec_for(llama_server, concurrency=2), options=FAST_RETRIES)
    yield backend
    backend.close()


def test_answers_with_the_servers_token_usage(remote: OpenAIHttpBackend) -> None:
    result = remote.generate(ask(FRANCE, max_tokens=32))
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.input_tokens > 20, "the system prompt and chat template count as input"
    assert 0 < result.output_tokens <= 32
    assert result.latency_s > 0


def test_max_tokens_cuts_the_answer_and_is_reported_as_length(remote: OpenAIHttpBackend) -> None:
    result = remote.generate(ask("Write a long story about a dragon.", max_tokens=4))
    assert result.finish_reason == "length"
    assert result.output_tokens == 4


def test_completion_models_use_the_completions_endpoint_with_the_few_shot_frame(llama_server: str) -> None:
    backend = OpenAIHttpBackend(spec_for(llama_server, prompt_format=PromptFormat.COMPLETION), options=FAST_RETRIES)
    try:
        result = backend.generate(ask(FRANCE, max_tokens=16))
    finally:
        backend.close()
    # The few-shot Question/Answer frame is ~60 tokens; a bare chat turn would be far shorter.
    assert result.input_tokens > 50
    assert result.text == result.text.strip() and "\n\n" not in result.text


def test_a_prompt_beyond_the_context_window_fails_for_good_with_the_servers_message(
        remote: OpenAIHttpBackend) -> None:
    with pytest.raises(PromptTooLong, match="HTTP 400: .*maximum context length is 2048"):
        remote.generate(ask("hello " * 3000, max_tokens=8))


def test_micro_batch_keeps_order_and_isolates_a_failure(remote: OpenAIHttpBackend) -> None:
    results = remote.generate_batch([
        ask(FRANCE, max_tokens=24), ask("hello " * 3000, max_tokens=8), ask("Name a colour.", max_tokens=3),
    ])
    first, second, third = results
    assert isinstance(first, GenerationResult) and "Paris" in first.text
    assert isinstance(second, PermanentJobError)
    assert isinstance(third, GenerationResult) and third.output_tokens <= 3


def test_registry_builds_the_http_backend_from_the_fleet_entry(llama_server: str) -> None:
    backend = make_backend(spec_for(llama_server), Settings())
    try:
        assert isinstance(backend, OpenAIHttpBackend)
        assert backend.generate(ask(FRANCE, max_tokens=2)).output_tokens == 2
    finally:
        backend.close()


# --- a scripted server: concurrency, timeouts, retries ------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion_body(text: str = "ok") -> dict[str, Any]:
    """An answer both endpoints' parsers accept (chat reads ``message``, completions ``text``)."""
    return {"choices": [{"message": {"role": "assistant", "content": text}, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}


class ScriptedServer:
    """Answers POSTs with the scripted replies in order (the last one repeats) and records them."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _next(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append((path, headers, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = server._next(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    time.sleep(reply.delay_s)
                    payload = json.dumps(reply.body if reply.body is not None else completion_body()).encode()
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    server._done()

            def log_message(self, *_: object) -> None:
                """Keep the scripted server quiet in test output."""

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def scripted_backend(server: ScriptedServer, options: EndpointOptions = FAST_RETRIES, **kw: Any) -> OpenAIHttpBackend:
    return OpenAIHttpBackend(spec_for(server.url, **kw), options=options)


def test_micro_batch_runs_concurrently_up_to_the_models_concurrency() -> None:
    with ScriptedServer([Reply(delay_s=0.5)]) as server:
        backend = scripted_backend(server, concurrency=3)
        started = time.perf_counter()
        results = backend.generate_batch([ask(f"q{i}", max_tokens=4) for i in range(7)])
        elapsed = time.perf_counter() - started
        backend.close()
    assert all(isinstance(r, GenerationResult) for r in results)
    assert server.max_in_flight == 3
    assert 1.45 < elapsed < 3.0, "7 requests of 0.5 s, 3 at a time: three rounds (1.5 s), not seven (3.5 s)"


def test_request_body_maps_the_job_and_sends_the_api_key() -> None:
    with ScriptedServer([Reply()]) as server:
        backend = OpenAIHttpBackend(spec_for(server.url), options=FAST_RETRIES, api_key="sk-test")
        backend.generate(ask(FRANCE, max_tokens=9, temperature=0.7, stop=["END"]))
        completion = OpenAIHttpBackend(spec_for(server.url, prompt_format=PromptFormat.COMPLETION),
                                       options=FAST_RETRIES)
        completion.generate(ask(FRANCE, max_tokens=5))
        backend.close()
        completion.close()
    (chat_path, chat_headers, chat), (completion_path, _, plain) = server.requests
    assert chat_path == "/v1/chat/completions" and chat_headers["authorization"] == "Bearer sk-test"
    assert chat["model"] == "smollm2-135m" and chat["max_tokens"] == 9 and chat["temperature"] == 0.7
    assert chat["stop"] == ["END"] and chat["stream"] is False
    assert chat["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FRANCE}]
    assert completion_path == "/v1/completions" and plain["prompt"].endswith(f"Question: {FRANCE}\nAnswer:")
    assert plain["stop"] == list(COMPLETION_STOP)


def test_a_hung_request_times_out_without_being_repeated() -> None:
    with ScriptedServer([Reply(delay_s=3.0)]) as server:
        backend = scripted_backend(server, EndpointOptions(read_timeout_s=0.3, backoff_base_s=0.01))
        started = time.perf_counter()
        with pytest.raises(BackendError, match="no answer within 0.3s") as raised:
            backend.generate(ask(FRANCE))
        assert time.perf_counter() - started < 2.0
        backend.close()
    assert not isinstance(raised.value, PermanentJobError), "a timeout is worth retrying later"
    assert len(server.requests) == 1


def test_429_is_retried_after_the_servers_retry_after() -> None:
    with ScriptedServer([Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}),
                         Reply(200, completion_body("after the wait"))]) as server:
        backend = scripted_backend(server)
        started = time.perf_counter()
        result = backend.generate(ask(FRANCE))
        elapsed = time.perf_counter() - started
        backend.close()
    assert result.text == "after the wait"
    assert len(server.requests) == 2
    assert 1.0 <= elapsed < 3.0, "waited what Retry-After asked (plus at most 10% jitter), not our 10 ms"


def test_server_errors_are_retried_with_backoff_then_succeed() -> None:
    with ScriptedServer([Reply(503, {"error": {"message": "loading"}}), Reply(502, "bad gateway"),
                         Reply(200, completion_body("third time"))]) as server:
        backend = scripted_backend(server)
        assert backend.generate(ask(FRANCE)).text == "third time"
        backend.close()
    assert len(server.requests) == 3


def test_persistent_server_errors_give_up_after_the_retries_with_the_last_message() -> None:
    with ScriptedServer([Reply(500, {"error": {"message": "CUDA out of memory"}})]) as server:
        backend = scripted_backend(server)
        with pytest.raises(BackendError, match="gave up after 4 attempts; last: HTTP 500: CUDA out of memory") as raised:
            backend.generate(ask(FRANCE))
        backend.close()
    assert not isinstance(raised.value, PermanentJobError)
    assert len(server.requests) == 4


def test_other_4xx_fail_the_job_for_good_with_the_servers_message() -> None:
    with ScriptedServer([Reply(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})]) as server:
        backend = scripted_backend(server)
        with pytest.raises(PermanentJobError, match="HTTP 401: Incorrect API key provided"):
            backend.generate(ask(FRANCE))
        backend.close()
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_reported() -> None:
    backend = OpenAIHttpBackend(spec_for(f"http://127.0.0.1:{free_port()}/v1"), options=FAST_RETRIES)
    with pytest.raises(BackendError, match="gave up after 4 attempts; last: ConnectError"):
        backend.generate(ask(FRANCE))
    backend.close()


def test_an_answer_without_usage_is_an_error_not_zero_cost() -> None:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    with ScriptedServer([Reply(200, body)]) as server:
        backend = scripted_backend(server)
        with pytest.raises(BackendError, match="lacks choices or usage"):
            backend.generate(ask(FRANCE))
        backend.close()


def test_fleet_entry_without_an_endpoint_is_refused() -> None:
    with pytest.raises(FleetFileError, match="needs endpoint_url"):
        OpenAIHttpBackend(spec_for(None))


def test_closed_backend_refuses_work() -> None:
    backend = OpenAIHttpBackend(spec_for("http://127.0.0.1:9/v1"))
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.generate(ask(FRANCE))
    assert all(isinstance(r, BackendError) and "closed" in str(r)
               for r in backend.generate_batch([ask(FRANCE), ask(FRANCE)]))
