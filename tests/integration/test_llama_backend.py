"""The llama.cpp backend with the real default-fleet models (SmolLM2-135M chat, Gemma-3-270M base).

Engine tests skip only when llama-cpp-python is not installed; missing model packages are a
failure (ModelWeightsNotFound says what to install). The prompt and registry tests at the top
need no engine. Answers are greedy (temperature 0) and short, so the file runs in seconds.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from scheduler.errors import BackendError
from scheduler.fleet import load_fleet
from scheduler.settings import Settings
from workers.backends import make_backend
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.backends.prompts import COMPLETION_STOP, completion_prompt, request_messages

FRANCE = "What is the capital of France?"


def ask(prompt: str | None = None, messages: list[dict[str, str]] | None = None, **kw: object) -> GenerationRequest:
    return GenerationRequest(job_id="t", prompt=prompt, messages=messages, **kw)  # type: ignore[arg-type]


# --- prompts and registry (no engine) -----------------------------------------------------------

def test_prompt_becomes_a_user_turn_after_the_system_prompt() -> None:
    assert request_messages(ask(FRANCE), "Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": FRANCE},
    ]


def test_job_messages_win_and_keep_their_own_system_turn() -> None:
    messages = [{"role": "system", "content": "Talk like a pirate."}, {"role": "user", "content": "Hi"}]
    assert request_messages(ask("ignored", messages), "Be brief.") == messages


def test_request_needs_a_prompt_or_valid_messages() -> None:
    with pytest.raises(BackendError, match="neither a prompt nor messages"):
        request_messages(ask(), None)
    with pytest.raises(BackendError, match="bad chat message"):
        request_messages(ask(messages=[{"role": "robot", "content": "x"}]), None)


def test_completion_prompt_flattens_a_conversation_into_questions_and_answers() -> None:
    prompt = completion_prompt([
        {"role": "system", "content": "Use metric units."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": " How tall is Everest? "},
    ])
    assert prompt.startswith("Answer each question briefly and correctly. Use metric units.\n\n")
    assert prompt.endswith("Question: What is 2+2?\nAnswer: 4.\n\nQuestion: How tall is Everest?\nAnswer:")
    # the examples must not end early: no stop sequence inside a question/answer pair
    for pair in prompt.split("\n\n")[1:]:
        assert not any(stop in pair for stop in COMPLETION_STOP)
    with pytest.raises(BackendError, match="no user turn"):
        completion_prompt([{"role": "system", "content": "x"}])


def test_importing_the_backends_package_loads_no_engine() -> None:
    code = "import sys, workers.backends; print(sorted(m for m in ('llama_cpp', 'vllm', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the real models ----------------------------------------------------------------------------

def _load(name: str) -> Iterator[Backend]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'switchyard[llama]')")
    settings = Settings()  # the real model cache, so Gemma is assembled once per machine
    backend = make_backend(load_fleet(settings.fleet_file).get(name), settings)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Backend]:
    yield from _load("smollm2-135m")


@pytest.fixture(scope="module")
def gemma() -> Iterator[Backend]:
    yield from _load("gemma-3-270m")


@pytest.fixture(params=["smollm2", "gemma"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(request.param)


def test_both_models_know_the_capital_of_france(backend: Backend) -> None:
    result = backend.generate(ask(FRANCE, max_tokens=32))
    assert "Paris" in result.text
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.finish_reason == "stop"
    assert result.latency_s > 0


def test_chat_model_takes_job_messages(smollm2: Backend) -> None:
    messages = [{"role": "system", "content": "You answer with one word."}, {"role": "user", "content": FRANCE}]
    assert "Paris" in smollm2.generate(ask(messages=messages, max_tokens=16)).text


def test_completion_model_answers_short(gemma: Backend) -> None:
    result = gemma.generate(ask("Who wrote Hamlet?", max_tokens=32))
    assert "Shakespeare" in result.text
    assert "\n" not in result.text, "the stop sequences end the answer at the line"


def test_max_tokens_is_respected(backend: Backend) -> None:
    result = backend.generate(ask("Write a long story about a dragon.", max_tokens=4))
    assert result.finish_reason == "length"
    assert result.output_tokens == 4


def test_stop_sequence_cuts_the_answer(backend: Backend) -> None:
    request = ask("Describe the city of Paris in two sentences.", max_tokens=24)
    full = backend.generate(request).text.strip()
    assert len(full) >= 6, full
    stop = full[3:5]  # two characters from inside the answer, wherever the tokens break
    cut = backend.generate(ask(request.prompt, max_tokens=24, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert cut.text.strip() == full[: full.index(stop)].strip()


def test_sampling_is_reproducible_with_the_fixed_seed(backend: Backend) -> None:
    request = ask("Name a fruit.", max_tokens=8, temperature=0.9)
    assert backend.generate(request).text == backend.generate(request).text


def test_prompt_that_leaves_no_room_for_max_tokens_is_refused_and_the_backend_survives(backend: Backend) -> None:
    # ~1,800 prompt tokens fit a 2,048 window, but not with 512 more to generate: llama.cpp
    # itself would silently shorten the answer.
    too_long = ask("hello " * 1800 + FRANCE, max_tokens=512)
    with pytest.raises(BackendError, match="prompt too long.*n_ctx 2048"):
        backend.generate(too_long)
    assert "Paris" in backend.generate(ask(FRANCE, max_tokens=32)).text


def test_micro_batch_returns_one_result_per_request_in_order(backend: Backend) -> None:
    results = backend.generate_batch([
        ask(FRANCE, max_tokens=32),
        ask("hello " * 3000, max_tokens=8),  # does not fit at all
        ask("What is the capital of France? Answer in one word.", max_tokens=3),
    ])
    assert len(results) == 3
    first, second, third = results
    assert isinstance(first, GenerationResult) and "Paris" in first.text
    assert isinstance(second, BackendError)
    assert isinstance(third, GenerationResult) and third.output_tokens <= 3


def test_closed_backend_refuses_work() -> None:
    pytest.importorskip("llama_cpp")
    settings = Settings()
    backend = make_backend(load_fleet(settings.fleet_file).get("smollm2-135m"), settings)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        backend.generate(ask(FRANCE, max_tokens=4))
