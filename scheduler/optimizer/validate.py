"""Shape and value checks on an AssignmentProblem, so a solver never sees garbage."""
from __future__ import annotations

import numpy as np

from scheduler.errors import InvalidRequest
from scheduler.optimizer.problem import AssignmentProblem, settled_surplus


def validate_problem(problem: AssignmentProblem) -> None:
    """Raise InvalidRequest naming the first field with a wrong shape, dtype or value."""
    cost = np.asarray(problem.cost_usd)
    if cost.ndim != 2:
        raise InvalidRequest(f"cost_usd must be (N, M), got shape {cost.shape}")
    n, m = cost.shape
    shapes = {
        "p_success": (problem.p_success, (n, m)),
        "eligible": (problem.eligible, (n, m)),
        "group": (problem.group, (n,)),
        "deferral_penalty_usd": (problem.deferral_penalty_usd, (n,)),
    }
    for name, (arr, shape) in shapes.items():
        if np.shape(arr) != shape:
            raise InvalidRequest(f"{name} must have shape {shape}, got {np.shape(arr)}")
    _validate_capacity_rows(problem, m)
    if np.ndim(problem.alpha) != 1:
        raise InvalidRequest(f"alpha must be (G,), got shape {np.shape(problem.alpha)}")
    if np.asarray(problem.eligible).dtype != bool:
        raise InvalidRequest("eligible must be a bool array")
    for name in ("capacity", "group"):
        if not np.issubdtype(np.asarray(getattr(problem, name)).dtype, np.integer):
            raise InvalidRequest(f"{name} must be an integer array")
    if not np.isfinite(cost).all():
        raise InvalidRequest("cost_usd has NaN or infinite entries")
    p = np.asarray(problem.p_success)
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise InvalidRequest("p_success must be finite and in [0, 1]")
    if (np.asarray(problem.capacity) < 0).any():
        raise InvalidRequest("capacity must be >= 0")
    g = np.asarray(problem.group)
    num_groups = np.size(problem.alpha)
    if n and ((g < 0) | (g >= num_groups)).any():
        raise InvalidRequest(f"group must be in [0, {num_groups})")
    alpha = np.asarray(problem.alpha, dtype=float)
    target = alpha[~np.isnan(alpha)]
    if ((target < 0) | (target > 1)).any():
        raise InvalidRequest("alpha must be in [0, 1] or nan (no target)")
    _validate_settled(problem, num_groups)
    w = np.asarray(problem.deferral_penalty_usd, dtype=float)
    if np.isnan(w).any() or (w < 0).any():
        raise InvalidRequest("deferral_penalty_usd must be >= 0 (inf = never defer)")


def _validate_settled(problem: AssignmentProblem, num_groups: int) -> None:
    """settled_jobs and settled_p_sum come together, (G,) each, counts >= 0, sums in [0, count],
    and the settled jobs of a group with a target meet its alpha: then deferring every job of a
    group still meets its row, which relax.py relies on (the policy leaves out a batch whose
    dispatched jobs fall short, e.g. after its promise margin rose)."""
    if (problem.settled_jobs is None) != (problem.settled_p_sum is None):
        raise InvalidRequest("settled_jobs and settled_p_sum must be given together")
    if problem.settled_jobs is None or problem.settled_p_sum is None:
        return
    for name in ("settled_jobs", "settled_p_sum"):
        if np.shape(getattr(problem, name)) != (num_groups,):
            raise InvalidRequest(f"{name} must have shape ({num_groups},), got {np.shape(getattr(problem, name))}")
    count = np.asarray(problem.settled_jobs)
    if not np.issubdtype(count.dtype, np.integer) or (count < 0).any():
        raise InvalidRequest("settled_jobs must be integers >= 0")
    total = np.asarray(problem.settled_p_sum, dtype=float)
    if not np.isfinite(total).all() or (total < 0).any() or (total > count + 1e-9).any():
        raise InvalidRequest("settled_p_sum must be finite and in [0, settled_jobs]")
    surplus = settled_surplus(problem)
    if (surplus < -1e-9).any():
        g = int(np.flatnonzero(surplus < -1e-9)[0])
        raise InvalidRequest(f"group {g}'s settled jobs have mean p below its alpha: leave them out")


def _validate_capacity_rows(problem: AssignmentProblem, m: int) -> None:
    """capacity is (M,) without capacity_row; with it, (R,) and capacity_row (M,) ints in [0, R)."""
    if problem.capacity_row is None:
        if np.shape(problem.capacity) != (m,):
            raise InvalidRequest(f"capacity must have shape ({m},), got {np.shape(problem.capacity)}")
        return
    rows = np.asarray(problem.capacity_row)
    if np.ndim(problem.capacity) != 1:
        raise InvalidRequest(f"capacity must be (R,), got shape {np.shape(problem.capacity)}")
    if rows.shape != (m,) or not np.issubdtype(rows.dtype, np.integer):
        raise InvalidRequest(f"capacity_row must be {m} integers, got {rows.dtype} of shape {rows.shape}")
    if m and ((rows < 0) | (rows >= np.size(problem.capacity))).any():
        raise InvalidRequest(f"capacity_row must be in [0, {np.size(problem.capacity)})")
