"""The backend interface: a model engine hosted once per worker process.

Only backend modules import an engine (llama_cpp, vllm, httpx for endpoints); everything else
sees these dataclasses.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationRequest:
    job_id: str
    prompt: str | None                       # plain text prompt, or
    messages: list[dict[str, str]] | None    # chat messages [{"role": ..., "content": ...}]
    max_tokens: int = 256
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str      # "stop" | "length"
    input_tokens: int
    output_tokens: int
    latency_s: float


class Backend(abc.ABC):
    """A loaded model. Constructed once per worker process; not thread-safe unless it says so."""

    #: True when generate_batch runs the whole micro-batch in one engine call (vLLM). The worker
    #: then claims the batch's jobs together; otherwise it claims each job when its turn comes.
    batches_natively: bool = False

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one answer. Raises scheduler.errors.BackendError on a model failure."""

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        """Generate a micro-batch; one failure does not affect the others.

        The default runs the requests back to back; engines that batch (vLLM) override it.
        """
        results: list[GenerationResult | Exception] = []
        for request in requests:
            try:
                results.append(self.generate(request))
            except Exception as exc:  # noqa: BLE001 - returned per job, never lost
                results.append(exc)
        return results

    def close(self) -> None:
        """Release the engine's resources."""
