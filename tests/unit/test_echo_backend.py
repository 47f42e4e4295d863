"""The echo backend, a test double of a model for load tests: it answers with the job's own text."""
from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.errors import FleetFileError, PermanentJobError
from scheduler.fleet import BackendKind, ModelSpec, load_fleet
from scheduler.settings import Settings
from workers.backends import GenerationRequest, make_backend
from workers.backends.echo import EchoBackend

FLEET = '''
[[models]]
name = "echo"
backend = "echo"
weights = "none"
usd_per_second = 0.0
max_batch_jobs = 32

[models.options]
delay_s = 0.02
'''


def echo_spec(**options: str | float | bool) -> ModelSpec:
    return ModelSpec(name="echo", backend=BackendKind.ECHO, weights="none", usd_per_second=0.0, options=options)


def request(prompt: str | None = None, messages: list[dict[str, str]] | None = None,
            max_tokens: int = 256) -> GenerationRequest:
    return GenerationRequest(job_id="j1", prompt=prompt, messages=messages, max_tokens=max_tokens)


def test_a_fleet_entry_names_it_and_its_delay(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    spec = load_fleet(path).get("echo")
    backend = make_backend(spec, Settings())
    assert isinstance(backend, EchoBackend) and backend.options.delay_s == 0.02
    result = backend.generate(request("What is  the capital of France?"))
    assert (result.text, result.finish_reason, result.input_tokens, result.output_tokens) == (
        "What is  the capital of France?", "stop", 6, 6)
    assert result.latency_s >= 0.02


def test_it_echoes_the_last_user_message_and_counts_every_message_read() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "second one"}]
    result = EchoBackend(echo_spec()).generate(request(messages=messages))
    assert (result.text, result.input_tokens, result.output_tokens) == ("second one", 8, 2)


def test_the_answer_is_cut_after_max_tokens_words() -> None:
    result = EchoBackend(echo_spec()).generate(request("one  two\tthree four", max_tokens=3))
    assert (result.text, result.finish_reason, result.output_tokens) == ("one  two\tthree", "length", 3)


def test_a_request_with_nothing_to_echo_fails_for_good() -> None:
    backend = EchoBackend(echo_spec())
    with pytest.raises(PermanentJobError, match="no user turn"):
        backend.generate(request(messages=[{"role": "system", "content": "Be brief."}]))
    with pytest.raises(PermanentJobError, match="neither a prompt nor messages"):
        backend.generate(request())
    # generate_batch returns each job's failure in its place; the others are answered.
    results = backend.generate_batch([request("hello"), request()])
    assert not isinstance(results[0], Exception) and results[0].text == "hello"
    assert isinstance(results[1], PermanentJobError)


def test_an_unknown_option_fails_the_workers_start() -> None:
    with pytest.raises(FleetFileError, match="delay"):
        make_backend(echo_spec(delay=1), Settings())
