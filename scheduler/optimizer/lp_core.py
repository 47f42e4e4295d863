"""The LP relaxation of the assignment problem, solved on a small core of undecided jobs.

Why not hand the whole LP to HiGHS: with N jobs the simplex needs about N pivots, and the M
capacity rows and G dense quality rows make each one dear (10k x 8 takes ~2 s, 50k x 16 ~60 s).
But only M + G rows couple the jobs, so once their prices are known almost every job has one
option that is clearly cheapest at those prices; only the jobs near a tie need the LP.

Prices. For capacity prices mu_j >= 0 and quality prices lambda_g >= 0 each job's reduced cost is
    r_ij = c_ij + mu_j - lambda_g (p_ij - alpha_g)     (eligible j),    r_i,defer = w_i
and the Lagrangian dual  D(mu, lambda) = sum_i min_k r_ik - sum_j W_j mu_j - sum_g s_g lambda_g
(s_g: the constant surplus of group g's settled jobs) is a lower bound on the
integer optimum for *any* prices (weak duality), so the gap we report is measured, not assumed.

Algorithm (column generation over jobs):
 1. Start from the prices that maximise a smoothed dual (prices.py: Newton steps in M + G
    dimensions); up to BASE_JOBS jobs, HiGHS simply solves the whole LP. Jobs with no eligible
    model are set aside first (deferred; they cannot take part).
 2. The core = the jobs whose best and second-best reduced costs are closest; every other job is
    fixed at its cheapest option. Capacity short, the core is sized by the slots rather than the
    window and also holds the jobs nearest the deferral margin (see nearest_ties). Solve the LP
    of the core (fixed jobs only move the right-hand sides) with elastic rows, so a poor first
    core cannot make it infeasible.
 3. Price the fixed jobs at the core LP's row duals. A fixed job whose fixed option is no longer
    its cheapest at these prices joins the core (most mispriced first, at most doubling it, with
    as many near-ties); repeat until none does. Then every column prices out, so the core LP's
    optimum is the full LP's, and D at the final prices equals it (strong duality): the bound is
    as tight as the LP relaxation. The fixed jobs themselves follow the best prices seen so far
    (by D), which a core that misses a binding row cannot undo.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from scheduler.optimizer.highs_model import Columns, HighsResult, solve_subset
from scheduler.optimizer.prices import capacity_short, smooth_prices
from scheduler.optimizer.problem import AssignmentProblem, settled_surplus, subproblem

BASE_JOBS = 500          # at most this many jobs: one LP over all of them
CORE_FRACTION = 0.03     # first core: the closest 3% of jobs ...
MIN_CORE = 200           # ... but at least this many
MAX_ROUNDS = 30
MARGIN_SHARE = 0.5       # capacity short: the core also holds this share more jobs, nearest the
                         # deferral margin


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
    short: bool = False  # capacity short (prices.capacity_short): the core held the margin too


def reduced_costs(
    problem: AssignmentProblem, coeff: np.ndarray, mu: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """(N, M+1): reduced cost of each model, then of deferral; inf where not allowed. ``mu`` (R,)
    prices the capacity rows; a column pays its row's price."""
    r = problem.cost_usd + mu[problem.rows][None, :] - lam[problem.group][:, None] * coeff
    r = np.where(problem.eligible, r, np.inf)
    return np.concatenate([r, problem.deferral_penalty_usd[:, None]], axis=1)


def dual_value(problem: AssignmentProblem, r: np.ndarray, capacity: np.ndarray, mu: np.ndarray,
               lam: np.ndarray) -> float:
    """D(mu, lambda) from the reduced costs (for a relaxed problem every job has an option); the
    groups' settled jobs add their constant surplus at the quality prices."""
    return float(r.min(axis=1).sum() - capacity @ mu - settled_surplus(problem) @ lam)


def _option(k: np.ndarray, num_models: int) -> np.ndarray:
    return np.where(k == num_models, -1, k)


def option_gaps(r: np.ndarray) -> np.ndarray:
    """(N,) second-best minus best reduced cost per job (inf with a single option)."""
    two = np.partition(r, 1, axis=1)[:, :2] if r.shape[1] > 1 else np.concatenate(
        [r, np.full_like(r, np.inf)], axis=1)
    with np.errstate(invalid="ignore"):
        gap = two[:, 1] - two[:, 0]
    return np.nan_to_num(gap, nan=np.inf, posinf=np.inf)


def deferral_gaps(r: np.ndarray) -> np.ndarray:
    """(N,) distance between deferral and the best model, in reduced cost (inf if either is
    missing)."""
    with np.errstate(invalid="ignore"):
        gap = np.abs(r[:, -1] - r[:, :-1].min(axis=1, initial=np.inf))
    return np.nan_to_num(gap, nan=np.inf, posinf=np.inf)


def nearest_ties(r: np.ndarray, size: int, margin: int,
                 first: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the ``size`` jobs nearest a tie between their two best options (the
    jobs ``first`` counted among them whatever their gap), plus the ``margin`` jobs nearest the
    deferral margin among the rest (0 unless capacity is short).

    Capacity short, the scheduled jobs' ties between models (costs ~1e-5 USD apart) are far
    nearer than any tie with deferral (penalties dollars apart), so a core of the nearest ties
    alone can hold no job at the margin: its capacity rows then have room, price capacity at 0
    and tell nothing about which jobs should be scheduled."""
    n = r.shape[0]
    size = min(size, n)
    gap = option_gaps(r)
    if first is not None:
        gap[first] = -np.inf
    chosen = np.zeros(n, dtype=bool)
    chosen[np.argpartition(gap, size - 1)[:size]] = True
    margin = min(margin, n - size)
    if margin > 0:
        gap = np.where(chosen, np.inf, deferral_gaps(r))
        chosen[np.argpartition(gap, margin - 1)[:margin]] = True
    return np.flatnonzero(chosen)


def solve_lp(
    problem: AssignmentProblem,
    coeff: np.ndarray,
    scale: float,
) -> LpCore:
    """The LP relaxation, its prices and a Lagrangian bound (see the module docstring).

    Jobs with no eligible model (after relax.py, every job it had to defer) can only be deferred
    and take no part: they are left out of every pass over the window and added back deferred,
    so a window that is mostly such jobs costs what its open jobs cost."""
    short = capacity_short(problem, problem.capacity.astype(float))
    open_jobs = np.flatnonzero(problem.eligible.any(axis=1))
    if open_jobs.size == problem.num_jobs:
        return _solve_open(problem, coeff, scale, short)
    closed = np.ones(problem.num_jobs, dtype=bool)
    closed[open_jobs] = False
    closed_cost = float(problem.deferral_penalty_usd[closed].sum())
    if not open_jobs.size:
        nothing = np.zeros(0, dtype=np.int64)
        empty = HighsResult(True, True, np.zeros(0), Columns(nothing, nothing), 0.0, 0.0,
                            np.zeros(problem.num_capacity_rows), np.zeros(problem.alpha.size), 0.0)
        return LpCore(np.full(problem.num_jobs, -1), open_jobs, empty, closed_cost, closed_cost,
                      0.0, 0, short)
    inner = _solve_open(subproblem(problem, open_jobs), coeff[open_jobs], scale, short)
    choice = np.full(problem.num_jobs, -1)
    choice[open_jobs] = inner.choice
    columns = Columns(job=open_jobs[inner.lp.columns.job], model=inner.lp.columns.model)
    return LpCore(choice, open_jobs[inner.core], replace(inner.lp, columns=columns),
                  inner.value + closed_cost, inner.bound + closed_cost, inner.slack, inner.rounds,
                  short)


def _solve_open(problem: AssignmentProblem, coeff: np.ndarray, scale: float, short: bool
                ) -> LpCore:
    """solve_lp for a window in which every job has an eligible model."""
    n, m = problem.num_jobs, problem.num_models
    cap = problem.capacity.astype(float)
    finite = np.abs(problem.cost_usd[problem.eligible])
    finite_w = problem.deferral_penalty_usd[np.isfinite(problem.deferral_penalty_usd)]
    biggest = max(float(finite.max(initial=0.0)), float(np.abs(finite_w).max(initial=0.0)), scale)
    # Slack must be dearer than any real trade-off: a quality price can reach cost / (p gap), and
    # p gaps of 1e-4 happen (a window hypothesis found preferred 2.8e-5 of quality slack at
    # 1e4 x cost to the feasible plan $0.80 dearer). 1e6 x cost covers gaps down to 1e-6.
    penalty = 1e6 * biggest

    if n <= BASE_JOBS:
        core = np.arange(n)
        choice = np.full(n, -1)
        res = solve_subset(problem, core, choice, coeff=coeff, scale=scale,
                           elastic_penalty=penalty)
        r = reduced_costs(problem, coeff, res.mu, res.lam)
        return LpCore(_largest(res, choice), core, res, res.objective,
                      min(dual_value(problem, r, cap, res.mu, res.lam), res.objective), res.slack, 1, short)

    y = smooth_prices(problem, coeff, scale, cap, short=short)
    mu, lam = y[:cap.size], y[cap.size:]

    r = reduced_costs(problem, coeff, mu, lam)
    bound = dual_value(problem, r, cap, mu, lam)
    # Capacity short, the jobs that can be scheduled number the slots, not the window.
    size = min(n, max(MIN_CORE, int(CORE_FRACTION * (min(n, cap.sum()) if short else n))))
    in_core = np.zeros(n, dtype=bool)
    in_core[nearest_ties(r, size, int(MARGIN_SHARE * size) if short else 0)] = True
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
        r_new = reduced_costs(problem, coeff, res.mu, res.lam)
        value_new = dual_value(problem, r_new, cap, res.mu, res.lam)
        better = value_new > bound
        bound = max(bound, value_new)
        k_fixed = np.where(choice < 0, m, choice)
        fixed_r = r_new[np.arange(n), k_fixed]
        best_r = r_new.min(axis=1)
        mispriced = np.where(in_core, 0.0, fixed_r - best_r)
        violated = mispriced > tol
        if not violated.any():
            break
        if violated.sum() > core.size:
            # At most double the core, most mispriced first. A core whose capacity rows have
            # room (too few of the jobs near the deferral margin in it) prices capacity at 0,
            # and then every deferred job looks mispriced; the most mispriced are the ones just
            # below the margin, which are what the core lacked.
            keep = np.argpartition(-mispriced, core.size - 1)[:core.size]
            violated[:] = False
            violated[keep] = True
        # Bring in the violators and as many of the next-closest jobs: prices move, and the
        # jobs near a tie are the ones that flip next.
        gap = np.where(in_core | violated, np.inf, option_gaps(r_new))
        extra = min(int(violated.sum()), int((~in_core & ~violated).sum()))
        if extra:
            violated[np.argpartition(gap, extra - 1)[:extra]] = True
        in_core |= violated
        if better:
            # The fixed jobs follow the best prices seen (by their dual value), not simply the
            # last core's: a core short of the jobs that make a row bind prices that row at
            # ~0 (or at its slack penalty), and fixing every job at such prices undoes good
            # ones. Whatever the fixed choices, the stop test above is at the core LP's own
            # prices, so the result is the LP optimum either way.
            r = r_new
    fixed = ~in_core
    fixed_cost = _fixed_cost(problem, choice, fixed)
    value = fixed_cost + res.objective
    return LpCore(_largest(res, choice), core, res, value, min(bound, value), res.slack, rounds,
                  short)


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
