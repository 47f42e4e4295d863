"""The registry of solvers: name -> callable on a relaxed (feasible) problem.

Every entry takes the output of ``relax`` and returns a SolverOutput, so ``solve`` can add the
bookkeeping (objective, status, timing) in one place and every method is compared on the same
problem. Exact solvers that find no integer solution within their time limit fall back to the
fast path's plan (and say so in ``solver``) rather than failing the tick.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scheduler.optimizer.exact import ExactResult, solve_highspy, solve_pulp
from scheduler.optimizer.fast import solve_fast
from scheduler.optimizer.relax import Relaxed


@dataclass(frozen=True)
class SolverOutput:
    model_index: np.ndarray
    bound: float
    proven: bool
    solver: str


class Solver(Protocol):
    def __call__(self, relaxed: Relaxed, *, time_limit_s: float) -> SolverOutput: ...


def fast(relaxed: Relaxed, *, time_limit_s: float) -> SolverOutput:
    res = solve_fast(relaxed.problem, relaxed.witness, time_limit_s=time_limit_s)
    name = "fast-lagrangian" if res.stage in ("lp-integral", "repair", "empty") else \
        f"fast-lagrangian ({res.stage})"
    return SolverOutput(res.model_index, res.bound, res.proven, name)


def _exact(name: str, res: ExactResult, relaxed: Relaxed, time_limit_s: float) -> SolverOutput:
    if res.model_index is not None:
        return SolverOutput(res.model_index, res.bound, res.proven, name)
    fallback = solve_fast(relaxed.problem, relaxed.witness, time_limit_s=time_limit_s)
    return SolverOutput(fallback.model_index, max(res.bound, fallback.bound), False,
                        f"{name} (no incumbent in time: fast plan)")


def exact_highs(relaxed: Relaxed, *, time_limit_s: float) -> SolverOutput:
    res = solve_pulp(relaxed.problem, backend="highs", time_limit_s=time_limit_s)
    return _exact("exact-highs", res, relaxed, time_limit_s)


def exact_cbc(relaxed: Relaxed, *, time_limit_s: float) -> SolverOutput:
    res = solve_pulp(relaxed.problem, backend="cbc", time_limit_s=time_limit_s)
    return _exact("exact-cbc", res, relaxed, time_limit_s)


def exact_highspy(relaxed: Relaxed, *, time_limit_s: float) -> SolverOutput:
    res = solve_highspy(relaxed.problem, time_limit_s=time_limit_s)
    return _exact("exact-highspy", res, relaxed, time_limit_s)


SOLVERS: dict[str, Solver] = {
    "fast": fast,
    "exact-highs": exact_highs,
    "exact-cbc": exact_cbc,
    "exact-highspy": exact_highspy,
}
