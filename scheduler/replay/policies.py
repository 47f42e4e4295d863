"""Routing policies compared by replay. Each returns the chosen model index per job.

Only the oracles see outcomes: ``oracle`` each query's, ``task-oracle`` only each task's realised
success rate (the ceiling for any predictor that knows a job's task but not which query inside it
a model gets right). Every other policy sees predictions and decision costs alone.
The ILP policies cut the arrival stream into windows of N jobs and ask the real optimizer
(``scheduler.optimizer.solve``) for the cheapest assignment whose mean predicted success in the
window is at least alpha -- the same call the scheduling tick makes.

``ilp_policy`` serves the *baselines* (oracle, task-oracle, ECCOS's ILP, the online replay's
oracle); the ``switchyard`` policies of the offline and the online replay are the production
``OptimizingPolicy`` on a simulated fleet (:mod:`scheduler.replay.simulated_fleet`), not this function.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem


@dataclass(frozen=True)
class SolverChoice:
    """How to call ``scheduler.optimizer.solve`` for one window."""

    method: str = "fast"         # "fast" (the tick's default) | "exact"
    backend: str = "highs"       # "highs" | "cbc"
    time_limit_s: float = 10.0


def _solve(problem: AssignmentProblem, choice: SolverChoice) -> np.ndarray:
    from scheduler.optimizer import solve  # imported here: the optimizer is a sibling package

    sol = solve(problem, method=choice.method, backend=choice.backend, time_limit_s=choice.time_limit_s)
    return np.asarray(sol.model_index, dtype=np.int64)


def window_problem(p: np.ndarray, cost: np.ndarray, alpha: float) -> AssignmentProblem:
    """One window: every job must be placed (no deferral), no capacity limit, one quality group."""
    n, m = p.shape
    return AssignmentProblem(
        cost_usd=np.ascontiguousarray(cost, dtype=float),
        p_success=np.ascontiguousarray(np.clip(p, 0.0, 1.0), dtype=float),
        capacity=np.full(m, n, dtype=np.int64),
        eligible=np.ones((n, m), dtype=bool),
        group=np.zeros(n, dtype=np.int64),
        alpha=np.array([alpha], dtype=float),
        deferral_penalty_usd=np.full(n, np.inf),
    )


def ilp_policy(p: np.ndarray, cost: np.ndarray, alpha: float, window: int, choice: SolverChoice) -> np.ndarray:
    """Solve consecutive windows of ``window`` jobs; jobs left unplaced go to their highest-p model."""
    n = p.shape[0]
    chosen = np.empty(n, dtype=np.int64)
    for start in range(0, n, window):
        sl = slice(start, min(start + window, n))
        pick = _solve(window_problem(p[sl], cost[sl], alpha), choice)
        unplaced = pick < 0
        pick[unplaced] = np.argmax(p[sl][unplaced], axis=1)
        chosen[sl] = pick
    return chosen


def eccos_rule(p: np.ndarray, cost: np.ndarray, alpha: float) -> np.ndarray:
    """ECCOS's published router: the cheapest model with p >= alpha, else the highest p."""
    ok = p >= alpha
    masked = np.where(ok, cost, np.inf)
    return np.where(ok.any(axis=1), np.argmin(masked, axis=1), np.argmax(p, axis=1))


def oracle_best(scores: np.ndarray, realised_cost: np.ndarray) -> np.ndarray:
    """Hindsight: a model with the best realised score, the cheapest among ties."""
    best = scores >= scores.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(best, realised_cost, np.inf), axis=1)


def best_single_model(quality: np.ndarray, cost_usd: np.ndarray) -> int:
    """The model a user would pick without routing: the highest realised quality, the cheapest
    among equals (so the cost shares are not measured against a needlessly dear model)."""
    top = np.flatnonzero(quality >= quality.max() - 1e-12)
    return int(top[np.argmin(cost_usd[top])])


def task_rates(scores: np.ndarray, tasks: list[str]) -> np.ndarray:
    """(N, M): each row's task's mean realised score per model -- what ``task-oracle`` routes on."""
    labels, task_index = np.unique(np.asarray(tasks, dtype=object), return_inverse=True)
    rates = np.stack([scores[task_index == t].mean(axis=0) for t in range(len(labels))])
    return rates[task_index]


def random_policy(n: int, m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, m, size=n)
