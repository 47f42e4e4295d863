"""Objective and constraint check of a plan: one definition for the solvers, tests and benchmarks."""
from __future__ import annotations

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem, settled_surplus

# Quality rows are sums of (p - alpha) over up to N jobs in floating point; a plan meets a row
# if its sum is >= -FEASIBILITY_TOL (HiGHS accepts MIP rows to 1e-6, CBC to 1e-7).
FEASIBILITY_TOL = 1e-6


def objective_usd(problem: AssignmentProblem, model_index: np.ndarray) -> float:
    """sum c_ij over assigned jobs + w_i over deferred ones (inf if a must-assign job is deferred)."""
    on = model_index >= 0
    rows = np.flatnonzero(on)
    cost = problem.cost_usd[rows, model_index[rows]].sum()
    return float(cost + problem.deferral_penalty_usd[~on].sum())


def quality_surplus(problem: AssignmentProblem, model_index: np.ndarray,
                    alpha: np.ndarray | None = None) -> np.ndarray:
    """(G,) sum over the group's scheduled and settled jobs of p - alpha; nan for groups without
    a target."""
    alpha = problem.alpha if alpha is None else alpha
    rows = np.flatnonzero(model_index >= 0)
    gi = problem.group[rows]
    surplus = np.bincount(gi, weights=problem.p_success[rows, model_index[rows]] - alpha[gi],
                          minlength=alpha.size) + settled_surplus(problem, alpha)
    return np.where(np.isnan(alpha), np.nan, surplus)


def violations(problem: AssignmentProblem, model_index: np.ndarray,
               alpha: np.ndarray | None = None) -> list[str]:
    """Every stated constraint the plan breaks, as text; [] for a feasible plan."""
    out: list[str] = []
    n, m = problem.num_jobs, problem.num_models
    if model_index.shape != (n,) or ((model_index < -1) | (model_index >= m)).any():
        return [f"model_index must be {n} ints in [-1, {m})"]
    rows = np.flatnonzero(model_index >= 0)
    bad = rows[~problem.eligible[rows, model_index[rows]]]
    if bad.size:
        out.append(f"{bad.size} job(s) on a model they are not eligible for, e.g. job {bad[0]}")
    load = problem.load(model_index)
    for r in np.flatnonzero(load > problem.capacity):
        out.append(f"capacity row {r} has {load[r]} jobs, capacity {problem.capacity[r]}")
    must = np.flatnonzero((model_index < 0) & ~np.isfinite(problem.deferral_penalty_usd))
    if must.size:
        out.append(f"{must.size} must-assign job(s) deferred, e.g. job {must[0]}")
    surplus = quality_surplus(problem, model_index, alpha)
    for g in np.flatnonzero(surplus < -FEASIBILITY_TOL):
        out.append(f"group {g} quality surplus {surplus[g]:.3g} < 0")
    return out
