"""The real vLLM backend, wherever vLLM is installed (``pip install '.[gpu]'``; a CUDA GPU for
the official wheels). Skipped elsewhere: tests/unit/test_vllm_mapping.py covers the batching
logic on any machine.

No download: the model is made here from a config and a tokenizer trained on a few sentences,
and vLLM fills the weights with random numbers (``load_format = "dummy"``). Its answers are
noise, so the tests check what does not depend on the weights: one result per job in order,
token counts that match the tokenizer, max_tokens, stops, per-job failures, and throughput.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.errors import PromptTooLong
from scheduler.fleet import BackendKind, ModelSpec, PromptFormat
from scheduler.settings import Settings
from workers.backends import make_backend
from workers.backends.base import GenerationRequest, GenerationResult

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'switchyard[gpu]')")

from workers.backends.vllm import VllmBackend, VllmOptions

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Name a primary colour. Red, blue and yellow are primary colours.",
    "Write a short story about a dragon who guards a library of old books.",
] * 20
N_CTX = 512
OPTIONS = VllmOptions(load_format="dummy", dtype="float16", gpu_memory_utilization=0.3, enforce_eager=True)


def make_tiny_model(directory: Path) -> Path:
    """A 2-layer Llama-shaped model (head size 64, which every attention backend supports) with a
    byte-level BPE tokenizer and a ChatML template: config and tokenizer files only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    LlamaConfig(
        vocab_size=len(fast), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=N_CTX, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True, torch_dtype="float16",
    ).save_pretrained(directory)
    return directory


def tiny_spec(directory: Path, prompt_format: PromptFormat = PromptFormat.CHAT) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "tiny-gpu", "backend": BackendKind.VLLM, "weights": str(directory), "prompt_format": prompt_format,
        "system_prompt": "Be brief.", "usd_per_second": 0.0006, "n_ctx": N_CTX, "max_batch_jobs": 32}
    if "options" in ModelSpec.model_fields:  # the fleet file's [models.options] table
        fields["options"] = OPTIONS.model_dump(exclude_defaults=True)
    return ModelSpec(**fields)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[VllmBackend]:
    loaded = VllmBackend(tiny_spec(model_dir), OPTIONS)
    yield loaded
    loaded.close()


def ask(prompt: str, **kw: object) -> GenerationRequest:
    return GenerationRequest(job_id=prompt[:8], prompt=prompt, messages=None, **kw)  # type: ignore[arg-type]


def test_a_micro_batch_gives_one_result_per_job_with_the_engines_token_counts(backend: VllmBackend) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backend.spec.weights)
    prompts = ["What is the capital of France?", "Name a primary colour.", "Write a short story."]
    results = backend.generate_batch([ask(p, max_tokens=8 + i) for i, p in enumerate(prompts)])
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        assert isinstance(result, GenerationResult), result
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
            tokenize=False, add_generation_prompt=True)
        assert result.input_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
        assert 1 <= result.output_tokens <= 8 + i
        # random weights may emit the end token early: then, and only then, it stopped
        assert result.finish_reason == "stop" if result.output_tokens < 8 + i else result.finish_reason in ("stop", "length")
        assert result.latency_s > 0


def test_a_prompt_that_does_not_fit_fails_alone(backend: VllmBackend) -> None:
    results = backend.generate_batch([ask("hello", max_tokens=4), ask("hello " * 600, max_tokens=4)])
    assert isinstance(results[0], GenerationResult)
    assert isinstance(results[1], PromptTooLong)


def test_sampling_is_reproducible_with_the_fixed_seed(backend: VllmBackend) -> None:
    request = ask("Name a primary colour.", max_tokens=12, temperature=0.9)
    assert backend.generate(request).text == backend.generate(request).text


def test_batched_throughput_beats_one_job_at_a_time(backend: VllmBackend) -> None:
    requests = [ask(f"Write a short story number {i}.", max_tokens=64) for i in range(32)]
    backend.generate_batch(requests[:2])  # warm-up
    started = time.perf_counter()
    batched = backend.generate_batch(requests)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    for request in requests[:8]:
        backend.generate(request)
    single_s = (time.perf_counter() - started) * len(requests) / 8
    tokens = sum(r.output_tokens for r in batched if isinstance(r, GenerationResult))
    print(f"\nvLLM tiny model: {tokens} tokens in {batched_s:.2f}s batched ({tokens / batched_s:.0f} tok/s); "
          f"one at a time would take ~{single_s:.2f}s")
    assert batched_s < single_s


def test_registry_loads_vllm_from_the_fleet_entry(model_dir: Path, backend: VllmBackend) -> None:
    if "options" not in ModelSpec.model_fields:
        pytest.skip("a fleet entry needs ModelSpec.options to ask for load_format = 'dummy'")
    # A second engine beside the first: both take 30% of the GPU's memory.
    loaded = make_backend(tiny_spec(model_dir, PromptFormat.COMPLETION), Settings())
    try:
        assert isinstance(loaded, VllmBackend)
        result = loaded.generate(ask("Who wrote Hamlet?", max_tokens=4))
        assert 1 <= result.output_tokens <= 4
    finally:
        loaded.close()
