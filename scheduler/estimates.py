"""Per (job, model) estimates the optimizer needs: success, tokens, latency and cost.

Pure: arrays, fleet specs and the measured fleet state in, arrays out. Generation speed is what
the model's workers measured (exponentially weighted, reported in heartbeats), or the fleet
file's prior before any job has finished.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.costs import estimate_tokens
from scheduler.fleet import Fleet, ModelSpec
from scheduler.plan import ModelState, WindowJob

# With no length prediction, a job is assumed to use this many tokens (or its max_tokens if less).
DEFAULT_OUTPUT_TOKENS = 128
# Reading the prompt is this many times faster than generating (llama.cpp/vLLM prefill vs decode).
PREFILL_SPEEDUP = 8.0


@dataclass(frozen=True)
class WindowEstimates:
    p_success: np.ndarray        # (N, M)
    input_tokens: np.ndarray     # (N,)
    output_tokens: np.ndarray    # (N, M)
    latency_s: np.ndarray        # (N, M) run time, without queueing
    finish_s: np.ndarray         # (N, M) queue wait + run time, seconds from now
    cost_usd: np.ndarray         # (N, M)
    min_cost_usd: np.ndarray     # (N, M) the cost of the shortest possible answer (one output token)


def estimate_window(jobs: Sequence[WindowJob], fleet: Fleet, states: Sequence[ModelState],
                    p_success: np.ndarray, output_tokens: np.ndarray | None) -> WindowEstimates:
    max_tokens = np.array([job.max_tokens for job in jobs], dtype=float)
    input_tokens = np.array([estimate_tokens(job.prompt_text) for job in jobs], dtype=float)
    default_tokens = np.tile(np.minimum(max_tokens, DEFAULT_OUTPUT_TOKENS)[:, None], (1, len(fleet.models)))
    if output_tokens is None:
        output_tokens = default_tokens
    output_tokens = np.minimum(np.where(np.isnan(output_tokens), default_tokens, output_tokens), max_tokens[:, None])
    # Measured speed when workers have reported one, else the fleet file's prior.
    tokens_per_s = np.array([state.tokens_per_s or spec.tokens_per_second_prior
                             for spec, state in zip(fleet.models, states, strict=True)])
    latency = (input_tokens[:, None] / PREFILL_SPEEDUP + output_tokens) / tokens_per_s[None, :]
    queue_wait = np.array([
        state.backlog_jobs * float(np.median(latency[:, j])) / max(state.live_workers, 1) if len(jobs) else 0.0
        for j, state in enumerate(states)])
    cost = np.column_stack([spec.cost_usd(input_tokens, output_tokens[:, j], latency[:, j])
                            for j, spec in enumerate(fleet.models)])
    one_token = np.ones_like(input_tokens)
    min_cost = np.column_stack([
        spec.cost_usd(input_tokens, one_token, (input_tokens / PREFILL_SPEEDUP + 1.0) / tokens_per_s[j])
        for j, spec in enumerate(fleet.models)])
    return WindowEstimates(p_success=np.clip(p_success, 0.0, 1.0), input_tokens=input_tokens,
                           output_tokens=output_tokens, latency_s=latency,
                           finish_s=latency + queue_wait[None, :], cost_usd=cost, min_cost_usd=min_cost)


def seconds_until(deadline: dt.datetime | None, now: dt.datetime) -> float:
    return float("inf") if deadline is None else (deadline - now).total_seconds()


def window_size(fleet: Fleet, states: Sequence[ModelState], horizon_s: float, headroom: float,
                min_jobs: int, max_jobs: int) -> int:
    """How many pending jobs a tick should plan: ``headroom`` times what the fleet can take now
    (each model's free capacity at its measured latency, or at the prior speed for a default-length
    answer before any is measured), within [min_jobs, max_jobs]. A tick's work then follows what
    can be dispatched, not the size of the backlog."""
    free = sum(free_capacity(spec, state, horizon_s, DEFAULT_OUTPUT_TOKENS / spec.tokens_per_second_prior)
               for spec, state in zip(fleet.models, states, strict=True))
    return int(min(max_jobs, max(min_jobs, np.ceil(headroom * free))))


def free_capacity(spec: ModelSpec, state: ModelState, horizon_s: float, est_latency_s: float) -> int:
    """Jobs model ``spec`` may take this window: enough to keep its live slots busy for
    ``horizon_s`` at its measured (or estimated) seconds per job, less what is already queued,
    never above the fleet file's cap. No live worker: nothing."""
    if state.live_workers <= 0:
        return 0
    latency_s = max(state.mean_latency_s or est_latency_s, 1e-3)
    busy_for_horizon = max(state.live_workers, int(state.live_workers * horizon_s / latency_s))
    return max(0, min(spec.capacity_jobs, busy_for_horizon) - state.backlog_jobs)
