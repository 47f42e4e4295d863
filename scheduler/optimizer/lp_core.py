"""The LP relaxation of the assignment problem, solved on a small core of undecided jobs.

Why not hand the whole LP to HiGHS: with N jobs the simplex needs about N pivots, and the M
capacity rows and G dense quality rows make each one dear (10k x 8 takes ~2 s, 50k x 16 ~60 s).
But only M + G rows couple the jobs, so once their prices are known almost every job has one
option that is clearly cheapest at those prices; only the jobs near a tie need the LP.

Prices. For capacity prices mu_j >= 0 and quality prices lambda_g >= 0 each job's reduced cost is
    r_ij = c_ij + mu_j - lambda_g (p_ij - alpha_g)     (eligible j),    r_i,defer = w_i
and the Lagrangian dual  D(mu, lambda) = sum_i min_k r_ik - sum_j W_j mu_j  is a lower bound on the
integer optimum for *any* prices (weak duality), so the gap we report is measured, not assumed.

Algorithm (column generation over jobs):
 1. Start from the prices that maximise a smoothed dual (prices.py: Newton steps in M + G
    dimensions); up to BASE_JOBS jobs, HiGHS simply solves the whole LP.
 2. The core = the jobs whose best and second-best reduced costs are closest; every other job is
    fixed at its cheapest option. Solve the LP of the core (fixed jobs only move the right-hand
    sides) with elastic rows, so a poor first core cannot make it infeasible.
 3. Take the core LP's row duals as the new prices. A fixed job whose fixed option is no longer
    its cheapest at these prices joins the core (with its near-ties); repeat until none does.
    Then every column prices out, so the core LP's optimum is the full LP's, and D at the final
    prices equals it (strong duality): the bound is as tight as the LP relaxation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.optimizer.highs_model import HighsResult, solve_subset
from scheduler.optimizer.prices import smooth_prices
from scheduler.optimizer.problem import AssignmentProblem

BASE_JOBS = 500          # at most this many jobs: one LP over all of them
CORE_FRACTION = 0.03     # first core: the closest 3% of jobs ...
MIN_CORE = 200           # ... but at least this many
MAX_ROUNDS = 30


@dataclass(frozen=True)
class LpCore:
    choice: np.ndarray   # (N,) option of every fixed job (model, -1 deferred); core jobs: their
                         # largest LP column
    core: np.ndarray     # job indices solved by the LP
    lp: HighsResult      # the core LP (columns, fractional values, prices)
    value: float         # LP optimum over all jobs (fixed jobs' cost + core LP)
    bound: float         # best Lagrangian dual value seen: a valid lower bound on the MILP
    slack: float         # elastic slack at the end; > 0 means the rows cannot all hold
    rounds: int


def reduced_costs(
    problem: AssignmentProblem, coeff: np.ndarray, mu: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """(N, M+1): reduced cost of each model, then of deferral; inf where not allowed."""
    r = problem.cost_usd + mu[None, :] - lam[problem.group][:, None] * coeff
    r = np.where(problem.eligible, r, np.inf)
    return np.concatenate([r, problem.deferral_penalty_usd[:, None]], axis=1)


def dual_value(r: np.ndarray, capacity: np.ndarray, mu: np.ndarray) -> float:
    """D(mu, lambda) from the reduced costs (for a relaxed problem every job has an option)."""
    return float(r.min(axis=1).sum() - capacity @ mu)


def _option(k: np.ndarray, num_models: int) -> np.ndarray:
    return np.where(k == num_models, -1, k)


def option_gaps(r: np.ndarray) -> np.ndarray:
    """(N,) second-best minus best reduced cost per job (inf with a single option)."""
    two = np.partition(r, 1, axis=1)[:, :2] if r.shape[1] > 1 else np.concatenate(
        [r, np.full_like(r, np.inf)], axis=1)
    with np.errstate(invalid="ignore"):
        gap = two[:, 1] - two[:, 0]
    return np.nan_to_num(gap, nan=np.inf, posinf=np.inf)


def solve_lp(
    problem: AssignmentProblem,
    coeff: np.ndarray,
    scale: float,
) -> LpCore:
    """The LP relaxation, its prices and a Lagrangian bound (see the module docstring)."""
    n, m = problem.num_jobs, problem.num_models
    cap = problem.capacity.astype(float)
    finite = np.abs(problem.cost_usd[problem.eligible])
    finite_w = problem.deferral_penalty_usd[np.isfinite(problem.deferral_penalty_usd)]
    biggest = max(float(finite.max(initial=0.0)), float(np.abs(finite_w).max(initial=0.0)), scale)
    # Slack must be dearer than any real trade-off: a quality price can reach cost / (p gap).
    penalty = 1e4 * biggest

    if n <= BASE_JOBS:
        core = np.arange(n)
        choice = np.full(n, -1)
        res = solve_subset(problem, core, choice, coeff=coeff, scale=scale,
                           elastic_penalty=penalty)
        r = reduced_costs(problem, coeff, res.mu, res.lam)
        return LpCore(_largest(res, choice), core, res, res.objective,
                      min(dual_value(r, cap, res.mu), res.objective), res.slack, 1)

    y = smooth_prices(problem, coeff, scale, cap)
    mu, lam = y[:m], y[m:]

    r = reduced_costs(problem, coeff, mu, lam)
    bound = dual_value(r, cap, mu)
    gap = option_gaps(r)
    size = min(n, max(MIN_CORE, int(CORE_FRACTION * n)))
    in_core = np.zeros(n, dtype=bool)
    in_core[np.argpartition(gap, size - 1)[:size]] = True
    tol = 1e-9 * scale
    for rounds in range(1, MAX_ROUNDS + 1):
        choice = _option(r.argmin(axis=1), m)
        core = np.flatnonzero(in_core)
        res = solve_subset(problem, core, choice, coeff=coeff, scale=scale,
                           elastic_penalty=penalty)
        if res.slack > 1e-9 and core.size < n and rounds < MAX_ROUNDS:
            # The fixed jobs overfill a row that the core cannot make up: the core LP's duals
            # are then the slack penalty, not prices, and every fixed job would look mispriced
            # (the core would jump to the whole window). Keep the prices and double the core
            # around the ties at them instead.
            gap = np.where(in_core, np.inf, option_gaps(r))
            extra = min(core.size, n - core.size)
            in_core[np.argpartition(gap, extra - 1)[:extra]] = True
            continue
        mu, lam = res.mu, res.lam
        r_new = reduced_costs(problem, coeff, mu, lam)
        bound = max(bound, dual_value(r_new, cap, mu))
        k_fixed = np.where(choice < 0, m, choice)
        fixed_r = r_new[np.arange(n), k_fixed]
        best_r = r_new.min(axis=1)
        violated = (~in_core) & (fixed_r - best_r > tol)
        if not violated.any():
            break
        # Bring in the violators and as many of the next-closest jobs: prices move, and the
        # jobs near a tie are the ones that flip next.
        gap = np.where(in_core | violated, np.inf, option_gaps(r_new))
        extra = min(int(violated.sum()), int((~in_core & ~violated).sum()))
        if extra:
            violated[np.argpartition(gap, extra - 1)[:extra]] = True
        in_core |= violated
        r = r_new
    fixed = ~in_core
    fixed_cost = _fixed_cost(problem, choice, fixed)
    value = fixed_cost + res.objective
    return LpCore(_largest(res, choice), core, res, value, min(bound, value), res.slack, rounds)


def _fixed_cost(problem: AssignmentProblem, choice: np.ndarray, mask: np.ndarray) -> float:
    idx = np.flatnonzero(mask)
    on = choice[idx] >= 0
    cost = problem.cost_usd[idx[on], choice[idx[on]]].sum()
    return float(cost + problem.deferral_penalty_usd[idx[~on]].sum())


def _largest(res: HighsResult, choice: np.ndarray) -> np.ndarray:
    """choice with each core job set to the column carrying most of its LP weight."""
    out = choice.copy()
    if res.x.size:
        order = np.lexsort((res.x, res.columns.job))
        last = np.r_[res.columns.job[order][1:] != res.columns.job[order][:-1], True]
        out[res.columns.job[order][last]] = res.columns.model[order][last]
    return out
