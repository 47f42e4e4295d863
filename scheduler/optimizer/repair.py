"""Turn an almost integral LP solution into a feasible plan with a few cheapest moves.

Rounding each fractional job to its largest LP column breaks at most a few rows by at most a
job's worth (a basic LP solution has about M + G fractional jobs). The repair then moves single
jobs, always the cheapest move that helps:
 1. a model over capacity sheds the job whose move elsewhere (a model with room, or deferral if
    allowed) costs least, counting the quality it loses at the LP's quality price;
 2. a group short of its quality row takes the move with the least cost per unit of surplus gained
    (capped at the deficit, so a move that closes it is judged by its whole cost): a job of the
    group to a more accurate model with room, off to deferral if it drags the mean down, or in
    from deferral if it lifts it.
Moves only fill models that have room, so step 2 never breaks step 1. Returns None when no move
helps (every model full, say); the caller then falls back to a MILP.
 3. Polish, because steps 1-2 overshoot (a whole job's quality to close a fraction of one): the
    single move that saves most while every row still holds, into a model with room; then the
    best-saving swap of two jobs' models among the jobs nearest a tie (loads unchanged, so the
    full cheap models take part); repeated while either finds something.
"""
from __future__ import annotations

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem

MAX_MOVES = 10_000
MAX_IMPROVING_MOVES = 200
MAX_SWAPS = 200
MAX_POLISH_ROUNDS = 5


class _Options:
    """Per-job option arrays with deferral as option M."""

    def __init__(self, problem: AssignmentProblem, coeff: np.ndarray) -> None:
        m = problem.num_models
        finite_w = np.isfinite(problem.deferral_penalty_usd)
        self.m = m
        self.cost = np.concatenate(
            [problem.cost_usd, np.where(finite_w, problem.deferral_penalty_usd, 0.0)[:, None]], axis=1)
        self.gain = np.concatenate([coeff, np.zeros((problem.num_jobs, 1))], axis=1)
        self.allowed = np.concatenate([problem.eligible, finite_w[:, None]], axis=1)
        self.capacity = np.concatenate([problem.capacity, [np.iinfo(np.int64).max]])


def repair(problem: AssignmentProblem, coeff: np.ndarray, plan: np.ndarray, lam: np.ndarray,
           near: np.ndarray) -> np.ndarray | None:
    """A feasible plan near ``plan`` (model per job, -1 deferred), or None. ``near``: the jobs
    closest to a tie at the LP prices, among which the polish looks for exchanges."""
    opt = _Options(problem, coeff)
    m = opt.m
    k_of = np.where(plan < 0, m, plan).astype(np.int64)
    load = np.bincount(k_of, minlength=m + 1)
    group = problem.group
    has_row = ~np.isnan(problem.alpha)

    for _ in range(MAX_MOVES):
        over = np.flatnonzero(load[:m] > problem.capacity)
        if not over.size:
            break
        j = over[0]
        jobs = np.flatnonzero(k_of == j)
        room = load < opt.capacity
        room[j] = False
        ok = opt.allowed[jobs] & room[None, :]
        if not ok.any():
            return None
        lost = opt.gain[jobs, j][:, None] - opt.gain[jobs]
        score = opt.cost[jobs] - opt.cost[jobs, j][:, None] + lam[group[jobs]][:, None] * lost
        score = np.where(ok, score, np.inf)
        i, k = np.unravel_index(np.argmin(score), score.shape)
        load[j] -= 1
        load[k] += 1
        k_of[jobs[i]] = k

    for g in np.flatnonzero(has_row):
        members = np.flatnonzero(group == g)
        for _ in range(MAX_MOVES):
            surplus = float(opt.gain[members, k_of[members]].sum())
            deficit = -surplus
            if deficit <= 1e-9:
                break
            room = load < opt.capacity
            here = k_of[members]
            gained = opt.gain[members] - opt.gain[members, here][:, None]
            ok = opt.allowed[members] & room[None, :] & (gained > 1e-12)
            if not ok.any():
                return None
            extra = opt.cost[members] - opt.cost[members, here][:, None]
            ratio = np.where(ok, extra / np.minimum(np.where(ok, gained, 1.0), deficit), np.inf)
            i, k = np.unravel_index(np.argmin(ratio), ratio.shape)
            load[here[i]] -= 1
            load[k] += 1
            k_of[members[i]] = k
    if (load[:m] > problem.capacity).any():
        return None
    pool = np.union1d(near, np.flatnonzero(k_of != np.where(plan < 0, m, plan)))
    for _ in range(MAX_POLISH_ROUNDS):
        moved = _improve(opt, problem, k_of, load) + _swap(opt, problem, k_of, pool)
        if not moved:
            break
    return np.where(k_of == m, -1, k_of)


def _improve(opt: _Options, problem: AssignmentProblem, k_of: np.ndarray, load: np.ndarray) -> int:
    """Fill room the repair left (a job it moved out frees a slot on a cheap model) with the
    single move that saves most while every quality row still holds; in place."""
    n = problem.num_jobs
    has_row = ~np.isnan(problem.alpha)
    rows = np.arange(n)
    for moves in range(MAX_IMPROVING_MOVES):
        room = load < opt.capacity
        surplus = np.bincount(problem.group, weights=opt.gain[rows, k_of], minlength=has_row.size)
        slack = np.where(has_row, surplus, np.inf)[problem.group]
        saving = opt.cost[rows, k_of][:, None] - opt.cost
        dq = opt.gain - opt.gain[rows, k_of][:, None]
        ok = opt.allowed & room[None, :] & (dq >= -slack[:, None] + 1e-9) & (saving > 1e-12)
        if not ok.any():
            return moves
        i, k = np.unravel_index(np.argmax(np.where(ok, saving, -np.inf)), saving.shape)
        load[k_of[i]] -= 1
        load[k] += 1
        k_of[i] = k
    return MAX_IMPROVING_MOVES


def _swap(opt: _Options, problem: AssignmentProblem, k_of: np.ndarray, pool: np.ndarray) -> int:
    """Exchange the models of two jobs of ``pool`` (loads unchanged) while that saves and every
    quality row holds; in place. Single moves cannot use a full cheap model; swaps can."""
    has_row = ~np.isnan(problem.alpha)
    g = problem.group[pool]
    same = g[:, None] == g[None, :]
    cost, gain = opt.cost[pool], opt.gain[pool]
    rows = np.arange(pool.size)
    for moves in range(MAX_SWAPS):
        ka = k_of[pool]
        surplus = np.bincount(problem.group, weights=opt.gain[np.arange(problem.num_jobs), k_of],
                              minlength=has_row.size)
        slack = np.where(has_row, surplus, np.inf)[g]
        here_c = cost[rows, ka]
        there_c = cost[:, ka]                    # [a, b]: cost of job a on b's model
        dq = gain[:, ka] - gain[rows, ka][:, None]   # [a, b]: quality job a gains there
        allowed = opt.allowed[pool][:, ka]
        saving = here_c[:, None] + here_c[None, :] - there_c - there_c.T
        ok = allowed & allowed.T & (ka[:, None] != ka[None, :]) & (saving > 1e-12)
        ok &= np.where(same, slack[:, None] + dq + dq.T >= 1e-9,
                       (slack[:, None] + dq >= 1e-9) & (slack[None, :] + dq.T >= 1e-9))
        if not ok.any():
            return moves
        a, b = np.unravel_index(np.argmax(np.where(ok, saving, -np.inf)), saving.shape)
        k_of[pool[a]], k_of[pool[b]] = ka[b], ka[a]
    return MAX_SWAPS
