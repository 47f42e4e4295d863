"""The llama.cpp backend: one GGUF model in this process, run on the CPU by llama-cpp-python.

Every request is turned into prompt *tokens* here, for both prompt formats, and then completed
with ``Llama.create_completion``. Tokenizing first lets us refuse a prompt that does not fit the
context window with a clear error (llama-cpp-python would silently shrink ``max_tokens``), and
gives chat and completion models one path for stops, usage and finish reasons. Chat models are
rendered with the chat template stored in their GGUF, exactly as ``create_chat_completion``
does. Consecutive requests that share a prefix (system prompt, few-shot examples) reuse the KV
cache, because llama-cpp-python keeps the longest common prefix of the previous prompt
(greedy requests only; see ``generate``).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from scheduler.errors import BackendError, PermanentJobError, PromptTooLong
from scheduler.fleet import ModelSpec, PromptFormat
from scheduler.settings import Settings
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.backends.prompts import COMPLETION_STOP, completion_prompt, request_messages
from workers.model_files import resolve_weights

DEFAULT_SEED = 1234  # fixed so that sampled (temperature > 0) answers are reproducible


class LlamaCppBackend(Backend):
    """A GGUF model hosted by llama.cpp. Thread-safe: a lock serialises generation."""

    def __init__(self, spec: ModelSpec, model_path: Path, *, n_threads: int = 1, seed: int = DEFAULT_SEED) -> None:
        self.spec = spec
        self.model_path = model_path
        self.seed = seed
        self._lock = threading.Lock()
        started = time.perf_counter()
        try:
            # n_threads_batch defaults to every core; on a small shared machine oversubscribed
            # llama.cpp threads spin-wait on each other and run ~100x slower, so pin both.
            self._llm: llama_cpp.Llama | None = llama_cpp.Llama(
                model_path=str(model_path), n_ctx=spec.n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads, seed=seed, verbose=False,
            )
        except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError on a bad file
            raise BackendError(f"model {spec.name!r}: llama.cpp could not load {model_path}: {exc}") from exc
        self.load_s = time.perf_counter() - started
        self._chat = self._chat_formatter() if spec.prompt_format is PromptFormat.CHAT else None

    @classmethod
    def from_settings(cls, spec: ModelSpec, settings: Settings) -> LlamaCppBackend:
        """Locate the weights (see workers.model_files) and load them with the configured threads."""
        return cls(spec, resolve_weights(spec, settings), n_threads=settings.llama_threads)

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        llm = self._loaded()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(
                f"model {self.spec.name!r} has no chat template in its GGUF; "
                "set prompt_format = \"completion\" in the fleet file"
            )
        eos, bos = llm.token_eos(), llm.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=llm.detokenize([eos], special=True).decode("utf-8", "replace") if eos >= 0 else "",
            bos_token=llm.detokenize([bos], special=True).decode("utf-8", "replace") if bos >= 0 else "",
            stop_token_ids=[eos],
        )

    def _loaded(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise BackendError(f"model {self.spec.name!r}: the backend is closed")
        return self._llm

    def _prompt(self, request: GenerationRequest) -> tuple[list[int], list[str], Any]:
        """Prompt tokens, stop strings and stopping criteria for ``request``."""
        llm = self._loaded()
        messages = request_messages(request, self.spec.system_prompt)
        stop = list(request.stop)
        if self._chat is None:
            text = completion_prompt(messages)
            # special=False: a job's text must not be able to inject control tokens.
            return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False), stop + list(COMPLETION_STOP), None
        try:
            rendered = self._chat(messages=cast(Any, messages))
        except Exception as exc:  # jinja2 errors, raise_exception() in the template
            raise BackendError(f"model {self.spec.name!r}: chat template failed: {exc}") from exc
        # special=True so the template's own markers (<|im_start|> ...) become control tokens,
        # as create_chat_completion does.
        tokens = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        return tokens, stop + list(rendered.stop or []), rendered.stopping_criteria

    def generate(self, request: GenerationRequest) -> GenerationResult:
        with self._lock:
            started = time.perf_counter()
            llm = self._loaded()
            if request.max_tokens < 1:  # llama-cpp-python reads 0 as "until the window is full"
                raise PermanentJobError(f"job {request.job_id}: max_tokens must be at least 1")
            tokens, stop, stopping_criteria = self._prompt(request)
            if len(tokens) + request.max_tokens > self.spec.n_ctx:
                raise PromptTooLong(
                    f"job {request.job_id}: prompt too long for model {self.spec.name!r}: "
                    f"{len(tokens)} prompt tokens + max_tokens {request.max_tokens} > context window "
                    f"n_ctx {self.spec.n_ctx}; shorten the prompt or lower max_tokens"
                )
            if request.temperature > 0:
                # Reusing the cached prompt prefix evaluates the prompt in different batches,
                # which moves the logits by a few ulps; greedy answers almost never notice, sampled ones
                # do. A full evaluation keeps "same request + fixed seed = same answer".
                llm.reset()
            try:
                out = cast(dict[str, Any], llm.create_completion(
                    prompt=tokens, max_tokens=request.max_tokens, temperature=request.temperature,
                    stop=stop or None, stopping_criteria=stopping_criteria, seed=self.seed,
                ))  # a dict, not an iterator: stream=False
            except Exception as exc:  # the engine's own failures, translated at the boundary
                raise BackendError(f"job {request.job_id}: llama.cpp failed on {self.spec.name!r}: {exc}") from exc
            latency_s = time.perf_counter() - started
        choice, usage = out["choices"][0], out["usage"]
        text = choice["text"]
        return GenerationResult(
            # the completion frame puts the answer after "Answer:", so it starts with a space
            text=text.strip() if self._chat is None else text,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            input_tokens=int(usage["prompt_tokens"]),
            output_tokens=int(usage["completion_tokens"]),
            latency_s=latency_s,
        )

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
