"""The fast path: the LP relaxation on a core of undecided jobs, rounded and repaired.

Why this works: only M + G rows (capacity and quality) couple the N jobs, so a basic optimal
solution of the LP relaxation has at most about M + G fractional jobs; every other job is already
integral. ``lp_core`` finds that LP optimum in a fraction of the time HiGHS needs for the whole LP
(prices from a smoothed Lagrangian dual, then column generation on the near-tie jobs), and its
Lagrangian dual value is a valid lower bound on the integer optimum: the reported gap is measured.

Rounding: each fractional job takes its largest LP column, which can break a capacity or quality
row by a job's worth; ``repair`` then makes the cheapest moves that restore them and polishes with
cost-saving moves and trades among the jobs nearest a tie (repair.py; capacity short, those
include the jobs nearest the deferral margin, so a scheduled job can trade places with a waiting
one). Every step is near-linear in the window: the trades look at a bounded pool. The cost over
the LP is the price of integrality on a few jobs: ~0.1% of the window at 1k jobs, ~0.005% at
10k (benchmarks/bench_optimizer.py). On windows of a few dozen jobs one job is a large share of
the cost and the gap can reach a few %; the exact MILP is cheap there and the better choice.
Capacity short, a fractional job can carry a penalty of hundreds of USD, and the LP bound can sit
that far below the integer optimum; measured against exact HiGHS the plans are within cents of
it, but for one window 30 USD over it (docs/optimizer.md).

If no single-job move can restore a row (every model full, say), HiGHS solves the rounding as a
MILP over the near-tie jobs, then over the whole core, then over every job, within the time
limit; last comes the relaxation step's feasible witness plan.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from scheduler.optimizer.highs_model import cost_scale, quality_coeff, solve_subset
from scheduler.optimizer.lp_core import MARGIN_SHARE, nearest_ties, reduced_costs, solve_lp
from scheduler.optimizer.problem import AssignmentProblem
from scheduler.optimizer.repair import repair

MIN_NEIGHBOURHOOD = 300    # jobs nearest a tie that the repair may trade
NEIGHBOURHOOD_PER_FRACTIONAL = 4
MAX_NEIGHBOURHOOD = 400    # with the margin share below, within repair.MAX_POOL
# The fallback rounding MILP stops once its incumbent is this close (relative to the whole window's LP
# value) to its own bound: proving the last 1e-6 of a knapsack-like sub-problem can take seconds.
ROUNDING_GAP = 1e-5


@dataclass(frozen=True)
class FastResult:
    model_index: np.ndarray
    bound: float
    proven: bool        # the LP optimum was integral and feasible as it stood
    stage: str          # which rounding stage produced the plan


def _round(problem: AssignmentProblem, free: np.ndarray, plan: np.ndarray, coeff: np.ndarray,
           scale: float, time_limit_s: float, gap_abs_usd: float, start: np.ndarray | None
           ) -> np.ndarray | None:
    res = solve_subset(problem, free, plan, coeff=coeff, scale=scale, integer=True,
                       time_limit_s=time_limit_s, gap_abs=gap_abs_usd, start=start)
    if not res.ok:
        return None
    on = res.x > 0.5
    out = plan.copy()
    out[free] = -1
    out[res.columns.job[on]] = res.columns.model[on]
    return out


def solve_fast(problem: AssignmentProblem, witness: np.ndarray, *, time_limit_s: float = 10.0
               ) -> FastResult:
    """A near-optimal plan of a feasible problem and a Lagrangian lower bound (see module doc)."""
    deadline = time.perf_counter() + time_limit_s
    n = problem.num_jobs
    if n == 0:
        return FastResult(np.zeros(0, dtype=np.int64), 0.0, True, "empty")
    coeff = quality_coeff(problem)
    scale = cost_scale(problem)
    lp = solve_lp(problem, coeff, scale)
    x = lp.lp.x
    frac = np.unique(lp.lp.columns.job[(x > 1e-6) & (x < 1 - 1e-6)])

    r = reduced_costs(problem, coeff, lp.lp.mu, lp.lp.lam)
    size = min(n, MAX_NEIGHBOURHOOD,
               max(MIN_NEIGHBOURHOOD, NEIGHBOURHOOD_PER_FRACTIONAL * frac.size, frac.size))
    margin = int(MARGIN_SHARE * size) if lp.short else 0
    near = nearest_ties(r, size, margin, first=frac)
    plan = repair(problem, coeff, lp.choice, lp.lp.lam, near, lp.short)
    if plan is not None:
        # An integral LP optimum that the repair left alone is the integer optimum.
        proven = frac.size == 0 and lp.slack <= 1e-9 and bool((plan == lp.choice).all())
        return FastResult(plan, lp.bound, proven, "repair")
    stages = [("neighbourhood", near), ("core", np.union1d(lp.core, near)),
              ("all-jobs", np.arange(n))]
    for stage, free in stages:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        # Over every job the witness is a valid first incumbent (elsewhere fixed jobs differ).
        start = witness if free.size == n else None
        plan = _round(problem, free, lp.choice, coeff, scale, left,
                      ROUNDING_GAP * max(abs(lp.value), scale), start)
        if plan is not None:
            return FastResult(plan, lp.bound, False, stage)
    return FastResult(witness, lp.bound, False, "witness")
