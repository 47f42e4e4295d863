"""How the vLLM backend turns a micro-batch into one engine call, against a test double.

``FakeVllmEngine`` stands in for ``vllm.LLM``: it has the two methods the backend uses, records
every ``generate`` call, and answers with objects shaped like vLLM's ``RequestOutput``; like vLLM,
it keeps the requests of a call that was interrupted and answers them with the next call's.
``FakeTokenizer`` stands in for the model's Hugging Face tokenizer (one token per character, so
counts are easy to check) and ``FakeSamplingParams`` for ``vllm.SamplingParams`` (which validates
its arguments when made). The real engine runs in tests/integration/test_vllm_backend.py, which
`make test` runs in .venv-vllm against vLLM's CPU build.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from scheduler.errors import BackendError, BackendUnavailable, PermanentJobError, PromptTooLong
from scheduler.fleet import BackendKind, ModelSpec, PromptFormat
from scheduler.settings import Settings
from workers.backends import make_backend
from workers.backends.base import GenerationRequest, GenerationResult
from workers.backends.prompts import COMPLETION_STOP, completion_prompt
from workers.backends.vllm_batch import DEFAULT_SEED, VllmBatchBackend

BOS = 1
POISON = "engine-rejects-this"


class FakeTokenizer:
    """One token per character; the chat template is a visible ``<role>content`` frame."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    def __init__(self) -> None:
        self.encoded: list[tuple[str, dict[str, bool]]] = []

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"

    def encode(self, text: str, *, add_special_tokens: bool, split_special_tokens: bool = False) -> list[int]:
        self.encoded.append((text, {"add_special_tokens": add_special_tokens,
                                    "split_special_tokens": split_special_tokens}))
        return ([BOS] if add_special_tokens else []) + [ord(c) for c in text]


@dataclass
class FakeSamplingParams:
    kwargs: dict[str, Any]


class FakeValidationError(Exception):
    """Like vLLM 0.32's VLLMValidationError: how it refuses a request, and not a ValueError."""


def fake_sampling_params(**kwargs: Any) -> FakeSamplingParams:
    if kwargs["temperature"] < 0:  # vLLM validates when the object is made
        raise FakeValidationError(f"temperature must be non-negative, got {kwargs['temperature']}.")
    return FakeSamplingParams(kwargs)


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion]


@dataclass
class FakeVllmEngine:
    """Stand-in for ``vllm.LLM``: answers each prompt with ``max_tokens`` copies of "x", or fewer
    when a scripted finish reason says the model stopped; rejects a batch holding POISON, as
    vLLM rejects a whole ``generate`` call when one request is invalid."""

    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    finish_reasons: dict[int, str | None] = field(default_factory=dict)   # prompt length -> reason
    calls: list[tuple[list[dict[str, list[int]]], list[FakeSamplingParams]]] = field(default_factory=list)
    drop_one_output: bool = False
    failure: Exception | None = None       # raised by every generate call (a crash)
    interrupt: Exception | None = None     # raised once, after the requests were added (a job timeout)
    refusal: type[Exception] = ValueError  # what a batch holding POISON raises
    # Requests added by an interrupted call: still in the engine, answered by the next call.
    unfinished: list[tuple[dict[str, list[int]], FakeSamplingParams]] = field(default_factory=list)

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def abort_unfinished(self) -> int:
        aborted, self.unfinished = len(self.unfinished), []
        return aborted

    def generate(self, prompts: list[dict[str, list[int]]], sampling_params: list[FakeSamplingParams], *,
                 use_tqdm: bool) -> list[FakeRequestOutput]:
        assert use_tqdm is False
        assert all(isinstance(p, FakeSamplingParams) for p in sampling_params)
        self.calls.append((prompts, sampling_params))
        if self.failure is not None:
            raise self.failure
        if any("".join(chr(t) for t in p["prompt_token_ids"] if t > BOS).find(POISON) >= 0 for p in prompts):
            raise self.refusal("invalid request in batch")  # vLLM adds none of the batch's requests then
        self.unfinished += zip(prompts, sampling_params, strict=True)
        if self.interrupt is not None:
            interrupt, self.interrupt = self.interrupt, None
            raise interrupt
        requests, self.unfinished = self.unfinished, []
        outputs = []
        for prompt, params in requests:
            ids = prompt["prompt_token_ids"]
            reason = self.finish_reasons.get(len(ids), "length")
            count = params.kwargs["max_tokens"] if reason == "length" else 1
            outputs.append(FakeRequestOutput(ids, [FakeCompletion(" x" * count, [120] * count, reason)]))
        return outputs[:-1] if self.drop_one_output else outputs


def spec(prompt_format: PromptFormat = PromptFormat.CHAT, system_prompt: str | None = "Be brief.") -> ModelSpec:
    return ModelSpec(name="gpu-model", backend=BackendKind.VLLM, weights="org/model", prompt_format=prompt_format,
                     system_prompt=system_prompt, usd_per_second=0.001, n_ctx=512)


class DiscardingBackend(VllmBatchBackend):
    """Aborts what an interrupted call left in the engine, as VllmBackend does with vLLM's."""

    def _discard_unfinished(self) -> int:
        assert isinstance(self._engine, FakeVllmEngine)
        return self._engine.abort_unfinished()


def backend_with(engine: FakeVllmEngine, **kw: Any) -> VllmBatchBackend:
    backend_class = kw.pop("backend_class", DiscardingBackend)
    return backend_class(kw.pop("model", spec()), engine, fake_sampling_params, max_model_len=512, **kw)


def ask(prompt: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest(job_id=prompt[:8], prompt=prompt, messages=kw.pop("messages", None), **kw)


def test_a_micro_batch_is_one_engine_call_with_per_request_sampling_params() -> None:
    engine = FakeVllmEngine()
    backend = backend_with(engine)
    results = backend.generate_batch([
        ask("one", max_tokens=3), ask("two", max_tokens=5, temperature=0.8, stop=["\n"]), ask("three", max_tokens=1),
    ])
    assert len(engine.calls) == 1
    prompts, params = engine.calls[0]
    assert len(prompts) == len(params) == 3
    assert [p.kwargs for p in params] == [
        {"n": 1, "max_tokens": 3, "temperature": 0.0, "stop": [], "seed": DEFAULT_SEED},
        {"n": 1, "max_tokens": 5, "temperature": 0.8, "stop": ["\n"], "seed": DEFAULT_SEED},
        {"n": 1, "max_tokens": 1, "temperature": 0.0, "stop": [], "seed": DEFAULT_SEED},
    ]
    assert [r.output_tokens for r in results if isinstance(r, GenerationResult)] == [3, 5, 1]


def test_chat_prompts_go_through_the_chat_template_without_a_second_bos() -> None:
    engine = FakeVllmEngine()
    backend_with(engine).generate(ask("Hi?", max_tokens=2))
    rendered = "<system>Be brief.<user>Hi?<assistant>"
    assert engine.calls[0][0] == [{"prompt_token_ids": [ord(c) for c in rendered]}]
    assert engine.tokenizer.encoded == [(rendered, {"add_special_tokens": False, "split_special_tokens": False})]


def test_completion_prompts_get_the_few_shot_frame_its_stops_and_no_control_tokens_from_the_job() -> None:
    engine = FakeVllmEngine()
    backend = backend_with(engine, model=spec(PromptFormat.COMPLETION, system_prompt=None))
    result = backend.generate(ask("Who wrote Hamlet?", max_tokens=2, stop=["."]))
    text = completion_prompt([{"role": "user", "content": "Who wrote Hamlet?"}])
    (prompt,), (params,) = engine.calls[0]
    assert prompt == {"prompt_token_ids": [BOS] + [ord(c) for c in text]}
    assert engine.tokenizer.encoded == [(text, {"add_special_tokens": True, "split_special_tokens": True})]
    assert params.kwargs["stop"] == [".", *COMPLETION_STOP]
    assert result.text == "x x", "the completion frame's leading space is stripped"


def test_token_counts_and_finish_reasons_come_from_the_engine_output() -> None:
    rendered_len = len("<system>Be brief.<user>ok<assistant>")
    engine = FakeVllmEngine(finish_reasons={rendered_len: "stop"})
    stopped, cut = backend_with(engine).generate_batch([ask("ok", max_tokens=9), ask("okay", max_tokens=4)])
    assert isinstance(stopped, GenerationResult) and isinstance(cut, GenerationResult)
    assert (stopped.input_tokens, stopped.output_tokens, stopped.finish_reason) == (rendered_len, 1, "stop")
    assert (cut.input_tokens, cut.output_tokens, cut.finish_reason) == (rendered_len + 2, 4, "length")
    assert stopped.latency_s == cut.latency_s > 0, "both waited for the one batched call"


def test_a_prompt_that_does_not_fit_fails_alone_before_the_engine_sees_the_batch() -> None:
    engine = FakeVllmEngine()
    results = backend_with(engine).generate_batch([
        ask("short", max_tokens=4), ask("long " * 100, max_tokens=64), ask("fits", max_tokens=0), ask("also", max_tokens=4),
    ])
    assert isinstance(results[1], PromptTooLong) and "n_ctx 512" in str(results[1])
    assert isinstance(results[2], PermanentJobError)
    assert all(isinstance(results[i], GenerationResult) for i in (0, 3))
    assert len(engine.calls) == 1 and len(engine.calls[0][0]) == 2


def test_when_the_engine_rejects_the_batch_each_request_is_retried_alone() -> None:
    engine = FakeVllmEngine()
    results = backend_with(engine).generate_batch([ask("fine", max_tokens=2), ask(POISON, max_tokens=2),
                                                   ask("good", max_tokens=2)])
    assert isinstance(results[0], GenerationResult) and isinstance(results[2], GenerationResult)
    assert isinstance(results[1], BackendError) and "invalid request in batch" in str(results[1])
    assert [len(prompts) for prompts, _ in engine.calls] == [3, 1, 1, 1]


def test_a_refusal_of_a_type_the_backend_is_told_about_is_also_retried_alone() -> None:
    engine = FakeVllmEngine(refusal=FakeValidationError)
    results = backend_with(engine, refusals=(FakeValidationError,)).generate_batch(
        [ask("fine", max_tokens=2), ask(POISON, max_tokens=2)])
    assert isinstance(results[0], GenerationResult)
    assert isinstance(results[1], PermanentJobError) and "refused" in str(results[1])
    assert [len(prompts) for prompts, _ in engine.calls] == [2, 1, 1]


def test_sampling_settings_the_engine_rejects_fail_only_their_job() -> None:
    engine = FakeVllmEngine()
    results = backend_with(engine).generate_batch([ask("cold", max_tokens=2), ask("hot", max_tokens=2, temperature=-1)])
    assert isinstance(results[0], GenerationResult)
    assert isinstance(results[1], PermanentJobError) and "temperature must be non-negative" in str(results[1])
    assert len(engine.calls) == 1 and len(engine.calls[0][0]) == 1


def test_requests_of_an_interrupted_call_are_aborted_not_answered_with_the_next_batch() -> None:
    engine = FakeVllmEngine(interrupt=BackendError("2 job(s) on gpu-model ran past its timeout of 300s"))
    backend = backend_with(engine)
    timed_out = backend.generate_batch([ask("slow one", max_tokens=2), ask("slow two", max_tokens=2)])
    assert all(isinstance(r, BackendError) and "timeout" in str(r) for r in timed_out)
    assert engine.unfinished == [], "aborted as soon as the call was interrupted"
    results = backend.generate_batch([ask("next", max_tokens=3)])
    assert isinstance(results[0], GenerationResult) and results[0].output_tokens == 3


def test_without_aborting_them_the_next_batch_fails_rather_than_take_another_jobs_answer() -> None:
    engine = FakeVllmEngine(interrupt=BackendError("timeout"))
    backend = backend_with(engine, backend_class=VllmBatchBackend)  # no engine to abort in
    backend.generate_batch([ask("slow one", max_tokens=2)])
    results = backend.generate_batch([ask("next", max_tokens=3)])
    assert isinstance(results[0], BackendError) and "2 outputs for 1 prompts" in str(results[0])


@pytest.mark.parametrize("failure", [RuntimeError("CUDA error: an illegal memory access"),
                                     BackendError("3 job(s) on gpu-model ran past its timeout of 300s")])
def test_an_engine_crash_or_a_timeout_fails_the_batch_without_running_it_again(failure: Exception) -> None:
    engine = FakeVllmEngine(failure=failure)
    results = backend_with(engine).generate_batch([ask(f"job {i}", max_tokens=2) for i in range(3)])
    assert len(engine.calls) == 1
    assert all(isinstance(r, BackendError) and str(failure) in str(r) for r in results)


def test_an_unfinished_or_aborted_request_is_an_error_for_that_job() -> None:
    rendered_len = len("<system>Be brief.<user>ok<assistant>")
    engine = FakeVllmEngine(finish_reasons={rendered_len: "abort"})
    aborted, fine = backend_with(engine).generate_batch([ask("ok", max_tokens=2), ask("okay", max_tokens=2)])
    assert isinstance(aborted, BackendError) and "'abort'" in str(aborted)
    assert isinstance(fine, GenerationResult)


def test_an_engine_answer_of_the_wrong_size_fails_the_jobs_rather_than_misattributing_results() -> None:
    engine = FakeVllmEngine(drop_one_output=True)
    results = backend_with(engine).generate_batch([ask("a", max_tokens=1), ask("b", max_tokens=1)])
    assert all(isinstance(r, BackendError) and "1 outputs for 2 prompts" in str(r) for r in results)
    assert len(engine.calls) == 1


def test_a_chat_model_needs_a_chat_template() -> None:
    engine = FakeVllmEngine()
    engine.tokenizer.chat_template = None  # type: ignore[assignment]
    with pytest.raises(BackendError, match="no chat template"):
        backend_with(engine)


def test_closed_backend_refuses_work() -> None:
    backend = backend_with(FakeVllmEngine())
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.generate(ask("hi", max_tokens=1))


def test_the_mapping_module_does_not_import_vllm() -> None:
    code = "import sys, workers.backends.vllm_batch; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_vllm_installed_the_registry_says_which_extra_to_install() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(BackendUnavailable, match=r"pip install 'switchyard\[gpu\]'"):
        make_backend(spec(), Settings())
