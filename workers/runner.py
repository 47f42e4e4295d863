"""Run one micro-batch: claim its jobs, generate, write each outcome exactly once.

Independent of Celery so it can be read and tested on its own; ``workers.tasks`` calls it.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from scheduler.errors import PermanentJobError, StorageUnavailable
from scheduler.fleet import ModelSpec
from scheduler.storage import ClaimedJob, Failure, JobStatus, Outcome, ResultStore
from workers.backends.base import Backend, GenerationRequest, GenerationResult
from workers.inflight import InFlight
from workers.timeout import JobTimeout, time_limit

log = logging.getLogger(__name__)
T = TypeVar("T")

# A result already computed is worth waiting for: keep retrying the write through a database
# outage for this long before giving the job up to its lease.
STORAGE_RETRY_S = 120.0
# Results of a back-to-back micro-batch are written together unless this long has passed since the
# last write: fast jobs share one transaction, slow ones (a real LLM call) are visible at once.
RESULT_FLUSH_S = 0.5
# What an answer that was written leaves the job in: accepted at once, or awaiting the scheduler's
# review when its plan has a cascade step (scheduler/review.py).
ANSWERED = (JobStatus.SUCCEEDED, JobStatus.REVIEWING)
# Why a run failed, as the few kinds the worker's metrics count (the job's error says the rest).
FAILURE_KINDS = ("timeout", "rejected", "engine_error", "storage_refused")


@dataclass
class BatchStats:
    succeeded: int = 0          # answers written (accepted at once, or awaiting review)
    failed: int = 0
    skipped: int = 0            # no longer ours: cancelled, re-planned, or already done
    output_tokens: int = 0
    generation_s: float = 0.0   # sum of per-job latencies
    input_tokens: int = 0
    cost_usd: float = 0.0       # what the succeeded jobs cost
    latencies_s: list[float] = field(default_factory=list, repr=False)    # per succeeded job
    failures: Counter[str] = field(default_factory=Counter, repr=False)   # FAILURE_KINDS -> runs


def failure_kind(error: Exception) -> str:
    if isinstance(error, JobTimeout):
        return "timeout"
    if isinstance(error, PermanentJobError):
        return "rejected"
    return "engine_error"


class BatchRunner:
    def __init__(self, results: ResultStore, backend: Backend, spec: ModelSpec, worker_id: str,
                 run_lease_s: float, max_attempts: int, clock: Callable[[], dt.datetime],
                 in_flight: InFlight | None = None) -> None:
        self.results = results
        self.backend = backend
        self.spec = spec
        self.worker_id = worker_id
        self.run_lease_s = run_lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.in_flight = in_flight or InFlight()

    def run(self, dispatch_id: str, job_ids: list[str]) -> BatchStats:
        stats = BatchStats()
        claimed = _with_storage_retry(functools.partial(
            self.results.claim_batch, job_ids, dispatch_id, self.spec.name, self.worker_id, self.clock(),
            self.run_lease_s))
        stats.skipped = len(job_ids) - len(claimed)
        if not claimed:
            return stats
        with self.in_flight.holding([job.run_token for job in claimed]):
            if self.backend.batches_natively:
                self._run_together(claimed, stats)
            else:
                self._run_back_to_back(claimed, stats)
        return stats

    def _run_together(self, jobs: list[ClaimedJob], stats: BatchStats) -> None:
        """One engine call for the whole micro-batch (vLLM, HTTP endpoints)."""
        outputs = self._generate(jobs, self.spec.job_timeout_s * 2)
        # Every job waited for the whole call; each is charged its share of the hardware time.
        self._write(list(zip(jobs, outputs, strict=True)), stats, share=len(jobs))

    def _run_back_to_back(self, jobs: list[ClaimedJob], stats: BatchStats) -> None:
        pending: list[tuple[ClaimedJob, GenerationResult | Exception]] = []
        last_write = time.monotonic()
        for job in jobs:
            pending.append((job, self._generate([job], self.spec.job_timeout_s)[0]))
            if time.monotonic() - last_write >= RESULT_FLUSH_S:
                self._write(pending, stats, share=1)
                pending, last_write = [], time.monotonic()
        self._write(pending, stats, share=1)

    def _generate(self, jobs: list[ClaimedJob], timeout_s: float) -> list[GenerationResult | Exception]:
        self.in_flight.started([job.run_token for job in jobs], timeout_s)
        try:
            with time_limit(timeout_s, f"{len(jobs)} job(s) on {self.spec.name}"):
                return self.backend.generate_batch([_request(job) for job in jobs])
        except Exception as exc:  # noqa: BLE001 - a failed engine call fails its jobs, not the worker
            return [exc] * len(jobs)

    def _write(self, outputs: list[tuple[ClaimedJob, GenerationResult | Exception]], stats: BatchStats,
               share: int) -> None:
        if not outputs:
            return
        records = [(job, self._outcome(output, share)) for job, output in outputs]
        statuses = _with_storage_retry(lambda: self.results.record(records, self.clock(), self.max_attempts))
        for (job, output), (_, outcome), status in zip(outputs, records, statuses, strict=True):
            if status is None:
                stats.skipped += 1  # its lease expired and another run owns it now
            elif isinstance(output, Exception):
                stats.failed += 1
                stats.failures[failure_kind(output)] += 1
                log.warning("job %s failed on %s (attempt %d): %s -> %s", job.id, self.spec.name, job.attempts,
                            output, status.value)
            elif status not in ANSWERED or not isinstance(outcome, Outcome):
                stats.failed += 1  # generated, but the database refused the output (the store logged why)
                stats.failures["storage_refused"] += 1
            else:
                stats.succeeded += 1
                stats.output_tokens += output.output_tokens
                stats.input_tokens += output.input_tokens
                stats.generation_s += output.latency_s
                stats.cost_usd += outcome.cost_usd
                stats.latencies_s.append(output.latency_s)

    def _outcome(self, output: GenerationResult | Exception, share: int) -> Outcome | Failure:
        if isinstance(output, Exception):
            # A job that can never succeed as submitted (prompt too long) is not retried.
            return Failure(f"{type(output).__name__}: {output}", retry=not isinstance(output, PermanentJobError))
        seconds = output.latency_s / share
        return Outcome(text=output.text, finish_reason=output.finish_reason, input_tokens=output.input_tokens,
                       output_tokens=output.output_tokens, latency_s=output.latency_s,
                       cost_usd=self.spec.cost_usd(output.input_tokens, output.output_tokens, seconds))


def _request(job: ClaimedJob) -> GenerationRequest:
    return GenerationRequest(job_id=job.id, prompt=job.prompt, messages=job.messages,
                             max_tokens=job.max_tokens, temperature=job.temperature, stop=job.stop)


def _with_storage_retry(operation: Callable[[], T]) -> T:
    deadline = time.monotonic() + STORAGE_RETRY_S
    delay = 0.5
    while True:
        try:
            return operation()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            log.warning("database unavailable; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
