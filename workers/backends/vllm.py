"""The vLLM backend: a model hosted in this worker process by vLLM's offline engine (``vllm.LLM``).

The only module that imports vLLM (the ``gpu`` extra). Loading is here; how a micro-batch becomes
one batched ``LLM.generate`` call is in ``vllm_batch``. ``weights`` in the fleet entry is what
vLLM loads: a Hugging Face model id or a local model directory; ``n_ctx`` becomes vLLM's
``max_model_len``, and ``[models.options]`` holds the engine settings below.
"""
from __future__ import annotations

import gc
import time

import vllm
from pydantic import BaseModel, ConfigDict, Field

from scheduler.errors import BackendError
from scheduler.fleet import ModelSpec
from scheduler.settings import Settings
from workers.backends.options import parse_options
from workers.backends.vllm_batch import DEFAULT_SEED, VllmBatchBackend


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
    """A model hosted by ``vllm.LLM`` on this process's GPU(s). Thread-safe."""

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
        super().__init__(spec, engine, vllm.SamplingParams, max_model_len=spec.n_ctx, seed=seed)
        self.load_s = time.perf_counter() - started

    @classmethod
    def from_settings(cls, spec: ModelSpec, settings: Settings) -> VllmBackend:
        """Engine options from the fleet entry's ``[models.options]``."""
        return cls(spec, parse_options(spec, VllmOptions))

    def close(self) -> None:
        super().close()
        # The engine's finalisers free the GPU memory and stop its helper processes once the last
        # reference is gone; collect now rather than at some later allocation.
        gc.collect()
