"""Make a window's problem feasible before any solver sees it, relaxing in a fixed order.

Only two things can make the problem infeasible: a must-assign job (deferral penalty inf) that
cannot be placed, and a quality row that the must-assign jobs drag below alpha. A job with a
finite penalty can always be deferred, and a group whose jobs can all be deferred always meets its
row (an empty schedule has no mean to miss, and a group's settled jobs meet its alpha: see
validate.py). Capacity and eligibility are physical and never
relaxed. The order, each step recorded as text in the solution's ``relaxations``:

 1. A must-assign job with no eligible model is deferred ("no eligible model").
 2. If the models' capacity cannot hold every remaining must-assign job, a largest set that fits
    (a maximum bipartite flow; which jobs of equal standing it drops is arbitrary but
    deterministic) stays must-assign and the rest are deferred ("capacity short").
 3. If some group's quality row still cannot hold, its alpha is lowered to the best mean
    predicted success the group can reach with every must-assign job placed, within capacity and
    eligibility (Dinkelbach's iteration over max-surplus transport plans, see _lower_alphas); the
    alpha used is reported in ``group_alpha_used``. Exact for one short group; when short groups
    compete for the same capacity the total surplus decides which gets it.

Jobs deferred by steps 1-2 leave the problem the solvers see (no eligible model, penalty 0), so
the reported objective counts them at 0 and the relaxations name them. Every solver solves the
same relaxed problem, so their plans and objectives are comparable. The plan from step 2 or 3 is
kept as ``witness``: a feasible plan that a solver can fall back on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

from scheduler.optimizer.highs_model import cost_scale, quality_coeff, solve_subset
from scheduler.optimizer.lp_core import solve_lp
from scheduler.optimizer.plan_check import FEASIBILITY_TOL, quality_surplus
from scheduler.optimizer.problem import AssignmentProblem, settled

MAX_DINKELBACH_STEPS = 20


@dataclass(frozen=True)
class Relaxed:
    problem: AssignmentProblem      # feasible by construction; what every solver solves
    relaxations: tuple[str, ...]
    alpha_used: np.ndarray          # (G,) equals problem.alpha
    witness: np.ndarray             # (N,) a feasible plan of ``problem``


def _jobs_text(idx: np.ndarray) -> str:
    shown = ", ".join(str(i) for i in idx[:5])
    return f"jobs {shown}{', ...' if idx.size > 5 else ''}"


def _max_flow_assignment(problem: AssignmentProblem, jobs: np.ndarray) -> np.ndarray:
    """(N,) a maximum placement of ``jobs`` within capacity (-1 = not placed): a flow from the
    jobs through their capacity rows; each placed job then takes its most accurate eligible
    column on the row the flow gave it."""
    n, num_cap = problem.num_jobs, problem.num_capacity_rows
    k = jobs.size
    ji, mj = np.nonzero(problem.eligible[jobs])
    pairs = np.unique(np.column_stack([ji, problem.rows[mj]]), axis=0)
    pj, pr = pairs[:, 0], pairs[:, 1]
    source, sink = 0, k + num_cap + 1
    tails = np.concatenate([np.zeros(k, np.int64), 1 + pj, 1 + k + np.arange(num_cap)])
    heads = np.concatenate([1 + np.arange(k), 1 + k + pr, np.full(num_cap, sink)])
    caps = np.concatenate([np.ones(k), np.ones(pj.size), problem.capacity]).astype(np.int32)
    graph = sp.csr_matrix((caps, (tails, heads)), shape=(k + num_cap + 2, k + num_cap + 2))
    flow = maximum_flow(graph, source, sink, method="dinic").flow.tocoo()
    on = (flow.data > 0) & (flow.row >= 1) & (flow.row <= k) & (flow.col > k)
    placed, row = flow.row[on] - 1, flow.col[on] - 1 - k
    on_row = problem.eligible[jobs[placed]] & (problem.rows[None, :] == row[:, None])
    plan = np.full(n, -1)
    plan[jobs[placed]] = np.where(on_row, problem.p_success[jobs[placed]], -np.inf).argmax(axis=1)
    return plan


def _best_quality_within_capacity(problem: AssignmentProblem, jobs: np.ndarray
                                  ) -> np.ndarray | None:
    """Each of ``jobs`` on its most accurate eligible model, if that fits in capacity."""
    best = np.where(problem.eligible[jobs], problem.p_success[jobs], -np.inf).argmax(axis=1)
    plan = np.full(problem.num_jobs, -1)
    plan[jobs] = best
    if (problem.load(plan) > problem.capacity).any():
        return None
    return plan


def _add_helpful_jobs(problem: AssignmentProblem, plan: np.ndarray, surplus: np.ndarray
                      ) -> np.ndarray:
    """``plan`` plus deferrable jobs of short groups that raise their group's mean, each on its
    most accurate model, best first, while that model's capacity row has room."""
    short = surplus < -FEASIBILITY_TOL
    coeff = np.where(problem.eligible, quality_coeff(problem), -np.inf)
    best = coeff.argmax(axis=1)
    gain = coeff[np.arange(problem.num_jobs), best]
    cand = np.flatnonzero((plan < 0) & np.isfinite(problem.deferral_penalty_usd)
                          & short[problem.group] & (gain > 0))
    cand = cand[np.argsort(-gain[cand], kind="stable")]
    room = problem.capacity - problem.load(plan)
    row = problem.rows[best[cand]]
    rank = np.zeros(cand.size, dtype=np.int64)
    for r in np.unique(row):
        on_r = row == r
        rank[on_r] = np.arange(on_r.sum())
    take = cand[rank < room[row]]
    out = plan.copy()
    out[take] = best[take]
    return out


def _max_surplus_plan(problem: AssignmentProblem) -> np.ndarray:
    """The plan maximising the total quality surplus, must-assign jobs placed (a transport LP:
    no quality rows, so its vertex optimum is integral)."""
    coeff = quality_coeff(problem)
    must = ~np.isfinite(problem.deferral_penalty_usd)
    surplus_problem = replace(
        problem,
        cost_usd=-coeff,
        alpha=np.full(problem.alpha.size, np.nan),
        deferral_penalty_usd=np.where(must, np.inf, 0.0),
    )
    zero = np.zeros_like(coeff)
    scale = max(cost_scale(replace(surplus_problem, cost_usd=np.abs(coeff))), 1e-3)
    lp = solve_lp(surplus_problem, zero, scale)
    plan = lp.choice
    x = lp.lp.x
    frac = np.unique(lp.lp.columns.job[(x > 1e-6) & (x < 1 - 1e-6)])
    if frac.size:
        res = solve_subset(surplus_problem, frac, plan, coeff=zero, scale=scale, integer=True)
        if res.ok:
            on = res.x > 0.5
            plan = plan.copy()
            plan[res.columns.job[on]] = res.columns.model[on]
    return plan


def _group_means(problem: AssignmentProblem, plan: np.ndarray) -> np.ndarray:
    """(G,) mean p of each group's scheduled and settled jobs, rounded down to 1e-9 so the plan
    meets a row with that alpha despite floating-point sums (0 for a group with none)."""
    rows = np.flatnonzero(plan >= 0)
    g = problem.group[rows]
    settled_count, settled_total = settled(problem)
    count = np.bincount(g, minlength=problem.alpha.size) + settled_count
    scheduled_p = np.bincount(g, weights=problem.p_success[rows, plan[rows]], minlength=problem.alpha.size)
    total = scheduled_p + settled_total
    return np.floor(total / np.maximum(count, 1) * 1e9) / 1e9


def _lower_alphas(problem: AssignmentProblem) -> tuple[np.ndarray, np.ndarray]:
    """(witness, alpha used) by Dinkelbach's iteration for each short group's best mean: with
    target t, the max-surplus plan's surplus F(t) = max sum (p - t) x is zero exactly at the best
    reachable mean, and moving t to the last plan's mean climbs to it (exact for one group)."""
    alpha = problem.alpha.astype(float)
    target = alpha.copy()
    witness = _max_surplus_plan(problem)
    for _ in range(MAX_DINKELBACH_STEPS):
        short = quality_surplus(problem, witness, alpha) < -FEASIBILITY_TOL
        new_target = np.where(short, _group_means(problem, witness), alpha)
        if np.allclose(new_target, target, rtol=0.0, atol=1e-9, equal_nan=True):
            break
        target = new_target
        witness = _max_surplus_plan(replace(problem, alpha=target))
    short = quality_surplus(problem, witness, alpha) < -FEASIBILITY_TOL
    used = np.where(short, np.minimum(_group_means(problem, witness), alpha), alpha)
    return witness, used


def relax(problem: AssignmentProblem) -> Relaxed:
    """The feasible problem every solver solves, and what was relaxed to get it."""
    n = problem.num_jobs
    notes: list[str] = []
    must = ~np.isfinite(problem.deferral_penalty_usd)
    forced = must & ~problem.eligible.any(axis=1)
    if forced.any():
        idx = np.flatnonzero(forced)
        notes.append(f"no eligible model: {idx.size} must-assign job(s) deferred ({_jobs_text(idx)})")

    witness = np.full(n, -1)
    kept = np.flatnonzero(must & ~forced)
    if kept.size:
        fits = _best_quality_within_capacity(problem, kept)
        witness = _max_flow_assignment(problem, kept) if fits is None else fits
        short = kept[witness[kept] < 0]
        if short.size:
            forced[short] = True
            notes.append(
                f"capacity short: {short.size} of {kept.size} must-assign jobs deferred, their "
                f"eligible models are full ({_jobs_text(short)})"
            )

    eligible = problem.eligible.copy()
    eligible[forced] = False
    penalty = np.where(forced, 0.0, problem.deferral_penalty_usd)
    out = replace(problem, eligible=eligible, deferral_penalty_usd=penalty)
    alpha = problem.alpha.astype(float).copy()

    surplus = quality_surplus(out, witness)
    if (surplus < -FEASIBILITY_TOL).any():
        witness = _add_helpful_jobs(out, witness, surplus)
        surplus = quality_surplus(out, witness)
    if (surplus < -FEASIBILITY_TOL).any():
        witness, alpha = _lower_alphas(out)
        for g in np.flatnonzero(alpha < problem.alpha):
            notes.append(
                f"quality unreachable: group {g} alpha {problem.alpha[g]:.4f} lowered to "
                f"{alpha[g]:.4f}, the best mean reachable with its must-assign jobs placed"
            )
        out = replace(out, alpha=alpha)
    return Relaxed(out, tuple(notes), alpha, witness)
