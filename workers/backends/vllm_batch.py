"""A micro-batch as ONE call to vLLM's offline engine: prompts and sampling params in, results out.

This module never imports vLLM: the engine (``vllm.LLM``), the ``SamplingParams`` class and the
exceptions with which vLLM refuses a request are handed in by ``workers.backends.vllm``, so the
mapping and batching logic can be read and unit tested on a machine without vLLM.

Prompts are tokenized here, not by the engine: chat models through the tokenizer's chat template
(which already holds BOS, so the engine must not add another), base models from the same
few-shot frame the llama.cpp backend uses. Knowing every prompt's length up front lets one job
that does not fit fail alone with PromptTooLong; vLLM would otherwise reject the whole call.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.errors import BackendError, PermanentJobError, PromptTooLong
from scheduler.fleet import ModelSpec, PromptFormat
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.backends.prompts import COMPLETION_STOP, completion_prompt, request_messages

DEFAULT_SEED = 1234  # the llama.cpp backend's seed: "same request + fixed seed = same answer"


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the mapping uses."""

    chat_template: Any

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> str: ...

    def encode(self, text: str, *, add_special_tokens: bool, split_special_tokens: bool = False) -> list[int]: ...


class Engine(Protocol):
    """The part of ``vllm.LLM`` the backend uses."""

    def get_tokenizer(self) -> Any: ...

    def generate(self, prompts: Any, sampling_params: Any, *, use_tqdm: bool) -> list[Any]: ...


@dataclass(frozen=True)
class Prepared:
    """One request ready for the engine."""

    index: int                      # position in the micro-batch
    token_ids: list[int]
    sampling: dict[str, Any]        # keyword arguments of vllm.SamplingParams
    params: Any                     # vllm.SamplingParams(**sampling), built (and validated) per job


class EngineRefused(PermanentJobError):
    """The engine refused a request before generating: vLLM validates what it is given, and the
    same request would be refused again."""


# How vLLM refuses a request it will not take, when the caller does not say: older releases raise
# ValueError or TypeError; 0.32 raises VLLMValidationError, which is neither (workers.backends.vllm
# passes it in).
DEFAULT_REFUSALS: tuple[type[BaseException], ...] = (ValueError, TypeError)


class VllmBatchBackend(Backend):
    """A model in a vLLM-shaped engine; ``generate_batch`` is one ``engine.generate`` call.
    Thread-safe: a lock serialises engine calls."""

    batches_natively = True

    def __init__(self, spec: ModelSpec, engine: Engine, sampling_params: Callable[..., Any], *,
                 max_model_len: int, seed: int = DEFAULT_SEED,
                 refusals: tuple[type[BaseException], ...] = DEFAULT_REFUSALS) -> None:
        self.spec = spec
        self.max_model_len = max_model_len
        self.seed = seed
        self._engine: Engine | None = engine
        self._sampling_params = sampling_params
        self._refusals = refusals
        self._lock = threading.Lock()
        self._tokenizer: Tokenizer = engine.get_tokenizer()
        if spec.prompt_format is PromptFormat.CHAT and not getattr(self._tokenizer, "chat_template", None):
            raise BackendError(
                f"model {spec.name!r}: its tokenizer has no chat template; "
                "set prompt_format = \"completion\" in the fleet file"
            )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        result = self.generate_batch([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        results: dict[int, GenerationResult | Exception] = {}
        ready: list[Prepared] = []
        for index, request in enumerate(requests):
            try:
                ready.append(self.prepare(index, request))
            except Exception as exc:  # noqa: BLE001 - this job fails alone
                results[index] = exc
        if ready:
            with self._lock:
                for prepared, outcome in zip(ready, self._run(ready), strict=True):
                    results[prepared.index] = outcome
        return [results[index] for index in range(len(requests))]

    def close(self) -> None:
        with self._lock:
            self._engine = None

    def prepare(self, index: int, request: GenerationRequest) -> Prepared:
        """Tokenize ``request`` and map its sampling parameters; raises for this job alone."""
        if request.max_tokens < 1:
            raise PermanentJobError(f"job {request.job_id}: max_tokens must be at least 1")
        messages = request_messages(request, self.spec.system_prompt)
        stop = list(request.stop)
        try:
            if self.spec.prompt_format is PromptFormat.CHAT:
                # Rendered text, then tokens without BOS: the template has its own, and its
                # markers (<|im_start|> ...) must become control tokens, as vLLM's server does.
                rendered = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                token_ids = list(self._tokenizer.encode(rendered, add_special_tokens=False))
            else:
                # split_special_tokens: a job's text must not be able to inject control tokens.
                token_ids = list(self._tokenizer.encode(completion_prompt(messages), add_special_tokens=True,
                                                        split_special_tokens=True))
                stop += COMPLETION_STOP
        except Exception as exc:  # jinja2 errors, raise_exception() in a template
            raise BackendError(f"job {request.job_id}: {self.spec.name!r} could not tokenize the prompt: {exc}") from exc
        if len(token_ids) + request.max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"job {request.job_id}: prompt too long for model {self.spec.name!r}: "
                f"{len(token_ids)} prompt tokens + max_tokens {request.max_tokens} > context window "
                f"n_ctx {self.max_model_len}; shorten the prompt or lower max_tokens"
            )
        sampling = {"n": 1, "max_tokens": request.max_tokens, "temperature": request.temperature,
                    "stop": stop, "seed": self.seed}
        try:
            # vLLM validates sampling settings here, when the object is made: a bad one must fail
            # its own job, not the engine call of the whole batch.
            params = self._sampling_params(**sampling)
        except Exception as exc:  # noqa: BLE001 - VLLMValidationError, ValueError: the job's settings
            raise PermanentJobError(
                f"job {request.job_id}: {self.spec.name!r} refuses its sampling settings: {exc}") from exc
        return Prepared(index, token_ids, sampling, params)

    def _run(self, ready: list[Prepared]) -> list[GenerationResult | Exception]:
        try:
            return self._generate(ready)
        except EngineRefused as exc:
            if len(ready) == 1:
                return [exc]
        except Exception as exc:  # noqa: BLE001 - a failed engine call fails its jobs, not the worker
            # Not retried here: after a timeout (the runner's SIGALRM) or a CUDA error, running
            # the jobs again one by one would run them without a limit, or crash again.
            return [exc] * len(ready)
        # Validation is all or nothing in vLLM: run each request alone so only the bad one
        # fails. Rare, so the lost batching is cheap.
        outcomes: list[GenerationResult | Exception] = []
        for prepared in ready:
            try:
                outcomes.extend(self._generate([prepared]))
            except Exception as exc:  # noqa: BLE001 - returned per job
                outcomes.append(exc)
        return outcomes

    def _discard_unfinished(self) -> int:
        """Abort the requests an interrupted ``generate`` call left in the engine; how many.

        ``LLM.generate`` adds the batch's requests, then steps the engine until none is left
        unfinished, and returns every request that finished meanwhile. When the worker's job
        timeout interrupts it, the engine (in a process of its own) goes on with the requests, and
        the next call would first wait for them and then return their answers with its own. The
        base class has no engine to ask; ``VllmBackend`` asks vLLM's."""
        return 0

    def _generate(self, ready: list[Prepared]) -> list[GenerationResult | Exception]:
        if self._engine is None:
            raise BackendError(f"model {self.spec.name!r}: the backend is closed")
        self._discard_unfinished()  # left by a call interrupted outside the handler below
        prompts = [{"prompt_token_ids": p.token_ids} for p in ready]
        params = [p.params for p in ready]
        started = time.perf_counter()
        try:
            outputs = self._engine.generate(prompts, params, use_tqdm=False)
        except BaseException as exc:
            self._discard_unfinished()  # at once: the engine must not go on with abandoned requests
            if isinstance(exc, BackendError) or not isinstance(exc, Exception):
                raise  # the runner's job timeout, raised inside the engine's loop; KeyboardInterrupt
            if isinstance(exc, self._refusals):
                raise EngineRefused(f"vLLM refused a request on {self.spec.name!r}: {exc}") from exc
            # the engine's own failures, translated at the boundary
            raise BackendError(f"vLLM failed on {self.spec.name!r}: {type(exc).__name__}: {exc}") from exc
        # Every job of the batch waited for the whole call.
        latency_s = time.perf_counter() - started
        if len(outputs) != len(ready):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(ready)} prompts on {self.spec.name!r}")
        return [self._result(output, latency_s) for output in outputs]

    def _result(self, output: Any, latency_s: float) -> GenerationResult | Exception:
        """A GenerationResult from one ``vllm.RequestOutput``; token counts are the engine's own."""
        completion = output.outputs[0]
        if completion.finish_reason not in ("stop", "length"):  # "abort", or None: unfinished
            return BackendError(
                f"vLLM ended a request on {self.spec.name!r} with finish_reason {completion.finish_reason!r}")
        text = completion.text
        return GenerationResult(
            # the completion frame puts the answer after "Answer:", so it starts with a space
            text=text.strip() if self.spec.prompt_format is PromptFormat.COMPLETION else text,
            finish_reason=completion.finish_reason,
            input_tokens=len(output.prompt_token_ids), output_tokens=len(completion.token_ids),
            latency_s=latency_s,
        )
