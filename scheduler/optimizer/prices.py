"""Capacity and quality prices from a smoothed Lagrangian dual, by projected Newton steps.

The dual D(mu, lambda) = sum_i min_k r_ik - W.mu (see lp_core) is concave but piecewise linear:
first-order methods crawl on it. Replacing each min by a soft-min at temperature tau,
    D_tau = sum_i -tau log sum_k exp(-r_ik / tau) - W.mu,
gives a smooth concave function within N tau log(M+1) of D whose gradient is the soft count of
jobs per model (minus capacity) and the soft quality surplus per group, and whose Hessian is a sum
of per-job covariances: an (M+G) x (M+G) matrix built with one BLAS product. With only M + G
prices, Newton's method on D_tau converges in a handful of passes over the jobs. Three stages,
each started from the last: a sample of the jobs at a coarse tau (cheap, finds the neighbourhood),
every job at a middle tau (removes the sample's error), and at a fine tau only the jobs near a tie
(the rest enter as a constant linear term), which sharpens the prices to well within the typical
gap between a job's two best options. A fine-stage step is checked against every job before it is
taken (see _checked): the constant term holds only near where it was taken. Prices are in units of
``scale`` (the typical cost), so tau is relative.

Capacity short (more jobs would take a model than there are slots, the normal state of a busy
scheduler) the capacity prices sit at the level of the deferral penalties, 4-8 orders of magnitude
above the costs that tau is measured in, and Newton steps from 0 never get there. Which jobs are
scheduled is then decided by their stakes (penalty minus cheapest cost): the level is the price
between the W-th and (W+1)-th largest stake, W the slots. So the prices are fitted on a placing
window, the jobs with the largest stakes (the slots and a margin) with that level taken off
their penalties, where they are again cost-sized; the level, re-centred on every job at the
fitted model and quality prices, is added back.
"""
from __future__ import annotations

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem, settled_surplus, subproblem

SAMPLE_JOBS = 4000     # the coarse stage sees at most this many jobs
COARSE_TAU = 0.1       # relative to the typical cost
MIDDLE_TAU = 0.03
FINE_TAU = 0.01
LIVE_TAUS = 12.0       # a job whose two best options differ by more is saturated at that tau
MAX_STEPS = 12
MAX_REFITS = 4
MIN_TAU = 1e-4        # the finest continuation stage
TAU_STEP = 3.0
MISFIT_JOBS = 20      # cool while the hard choices overfill rows by more than this many jobs ...
MISFIT_FRACTION = 0.002   # ... or this share of the window, whichever is more
RIDGE = 1e-9
# Capacity short: the prices are fitted on a placing window of the jobs with the largest stakes,
# the slots plus this many more (or this share of the slots, whichever is more) below the margin.
PLACING_EXTRA_JOBS = 200
PLACING_EXTRA_SHARE = 0.25
MAX_STEP = 10.0       # largest Newton step, relative to the largest price
MAX_HALVINGS = 4      # a refit's proposal is checked against every job this many times at most


class SmoothDual:
    """D_tau over a set of jobs, plus the linear part from saturated jobs; units of ``scale``."""

    def __init__(self, problem: AssignmentProblem, coeff: np.ndarray, scale: float,
                 capacity: np.ndarray, quality_offset: np.ndarray, rows: np.ndarray) -> None:
        self.m = problem.num_capacity_rows   # prices y = (mu per capacity row, lambda per group)
        self.num_groups = problem.alpha.size
        # (M, R) which capacity row each column draws on: column sums become row sums through it.
        self.to_rows = np.zeros((problem.num_models, self.m))
        self.to_rows[np.arange(problem.num_models), problem.rows] = 1.0
        self.column_row = problem.rows
        elig = problem.eligible[rows]
        # Deferral is column M: its cost is the penalty, it has no price and no quality term.
        self.cost = np.concatenate(
            [np.where(elig, problem.cost_usd[rows] / scale, np.inf),
             problem.deferral_penalty_usd[rows, None] / scale], axis=1)
        self.coeff = np.concatenate(
            [np.where(elig, coeff[rows], 0.0), np.zeros((rows.size, 1))], axis=1)
        self.group = problem.group[rows]
        self.capacity = capacity
        self.quality_offset = quality_offset
        self.onehot = np.zeros((rows.size, self.num_groups))
        self.onehot[np.arange(rows.size), self.group] = 1.0
        self.has_row = ~np.isnan(problem.alpha)

    def evaluate(self, y: np.ndarray, tau: float, *, derivatives: bool = True
                 ) -> tuple[float, np.ndarray, np.ndarray]:
        """(D_tau, gradient, Newton ascent direction) at y; the last two empty if not asked."""
        m, g = self.m, self.num_groups
        mu, lam = y[:m], y[m:]
        # In-place on two N x (M+1) buffers: at 10k x 8 this runs ~15 times per solve.
        r = self.cost + np.append(mu[self.column_row], 0.0)
        buf = np.multiply(self.coeff, lam[self.group][:, None])
        r -= buf
        low = r.min(axis=1)
        r -= low[:, None]
        r *= -1.0 / tau
        e = np.exp(r, out=r)
        total = e.sum(axis=1)
        value = float((low - tau * np.log(total)).sum() - self.capacity @ mu
                      - self.quality_offset @ lam)
        if not derivatives:
            return value, np.zeros(0), np.zeros(0)
        pi = np.divide(e, total[:, None], out=e)
        pa = np.multiply(pi, self.coeff, out=buf)
        abar = pa.sum(axis=1)
        p_models = pi[:, :-1] @ self.to_rows          # (N, R) each job's soft weight per row
        counts = p_models.sum(axis=0)
        grad = np.concatenate([counts - self.capacity,
                               -np.bincount(self.group, weights=abar, minlength=g)
                               - self.quality_offset])
        cov = np.empty((m + g, m + g))
        cov[:m, :m] = np.diag(counts) - p_models.T @ p_models
        second = np.einsum("ij,ij->i", pa, self.coeff)
        pa -= pi * abar[:, None]
        cross = -((pa[:, :-1] @ self.to_rows).T @ self.onehot)
        cov[:m, m:] = cross
        cov[m:, :m] = cross.T
        cov[m:, m:] = np.diag(np.bincount(self.group, weights=second - abar**2, minlength=g))
        free = (y > 1e-12) | (grad > 0)
        free[m:] &= self.has_row
        direction = np.zeros_like(y)
        idx = np.flatnonzero(free)
        if idx.size:
            h = cov[np.ix_(idx, idx)] / tau
            h = h + (RIDGE * max(float(np.trace(h)), 1.0) + 1e-12) * np.eye(idx.size)
            direction[idx] = np.linalg.solve(h, grad[idx])
        return value, grad, direction


def _capped(d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A price whose curvature vanishes (no job near a tie for it) gets a huge Newton step; cap
    it so a line search starts from a sane point."""
    limit = MAX_STEP * max(1.0, float(np.abs(y).max(initial=0.0)))
    size = float(np.abs(d).max(initial=0.0))
    return d * (limit / size) if size > limit else d


def _newton(dual: SmoothDual, y: np.ndarray, tau: float, rtol: float) -> np.ndarray:
    """Projected Newton ascent on D_tau until a step moves no price by more than rtol (relative
    to the largest price)."""
    value, _, d = dual.evaluate(y, tau)
    d = _capped(d, y)
    for _ in range(MAX_STEPS):
        step = 1.0
        for _ in range(30):
            cand = np.maximum(0.0, y + step * d)
            c_value, _, c_d = dual.evaluate(cand, tau, derivatives=step == 1.0)
            if c_value >= value - 1e-12 * abs(value):
                break
            step *= 0.5
        else:
            return y
        if step != 1.0:
            c_value, _, c_d = dual.evaluate(cand, tau)
        moved = float(np.abs(cand - y).max())
        y, value, d = cand, c_value, _capped(c_d, cand)
        if moved < rtol * max(1.0, float(np.abs(y).max())):
            break
    return y


def smooth_prices(
    problem: AssignmentProblem,
    coeff: np.ndarray,
    scale: float,
    capacity: np.ndarray,
    *,
    short: bool | None = None,
) -> np.ndarray:
    """Prices (mu, lambda) in USD near the maximiser of the Lagrangian dual.

    A coarse pass at COARSE_TAU on a sample (capacities scaled to it) finds the neighbourhood;
    a fine pass at FINE_TAU over all jobs sharpens it, iterating only over the jobs whose two best
    options are within LIVE_TAUS * tau of each other: the others sit at their best option with
    weight ~1 and only add a linear term (their counts and quality surplus). Capacity short, the
    same on the placing window, plus the deferral level (module doc). ``short``: whether it is
    (capacity_short), if the caller knows already.
    """
    stakes = _short_of_capacity(problem, capacity) if short is not False else None
    if stakes is not None:
        return _short_prices(problem, coeff, scale, capacity, stakes)
    n, m, g = problem.num_jobs, problem.num_capacity_rows, problem.alpha.size
    y = np.zeros(m + g)
    rows = np.arange(n)
    if n > SAMPLE_JOBS:
        rows = np.sort(np.random.default_rng(0).choice(n, SAMPLE_JOBS, replace=False))
    # A group's settled jobs (problem.py) enter every stage as a constant quality surplus.
    settled = settled_surplus(problem)
    coarse = SmoothDual(problem, coeff, scale, capacity * (rows.size / n), settled * (rows.size / n), rows)
    # The early stages only need to land near the next stage's optimum.
    y = _newton(coarse, y, COARSE_TAU, 1e-3)
    whole = SmoothDual(problem, coeff, scale, capacity, settled, np.arange(n))
    if rows.size < n:
        # The sample's prices are off by its sampling error (~10%): one pass over every job at
        # a middle temperature brings them close enough for the live-set pass to be stable.
        y = _newton(whole, y, MIDDLE_TAU, 1e-3)

    # Refit on the live jobs until no saturated job would change its mind at the new prices.
    y = _refit(problem, coeff, scale, capacity, y, FINE_TAU, whole)
    # Continuation: when many jobs sit closer to a tie than FINE_TAU (costs that differ by far
    # less than the typical cost, e.g. cheap models whose capacity prices make them nearly
    # interchangeable), the prices at FINE_TAU are off by about tau, and the hard choices at them
    # overfill capacity by hundreds of jobs: more than the core LP can absorb. Cool further while
    # that misfit is large, keeping the best prices seen. A stage that does not improve is
    # dropped but does not end the cooling unless it went far astray (twice the best misfit):
    # the next, cooler stage often gets there (the ample tick benchmark's 10k window: stopping
    # at the first stage that did not improve left the core LP to grow from 300 to 4,600 jobs,
    # 0.2 s to 0.55 s).
    best_y, best_misfit = y, _misfit(problem, coeff, scale, capacity, y)
    tau = FINE_TAU
    limit = max(MISFIT_JOBS, MISFIT_FRACTION * n)
    while best_misfit > limit and tau > MIN_TAU:
        tau /= TAU_STEP
        y = _refit(problem, coeff, scale, capacity, y, tau, whole)
        misfit = _misfit(problem, coeff, scale, capacity, y)
        if misfit < best_misfit:
            best_y, best_misfit = y, misfit
        elif misfit > 2 * best_misfit:
            break
    return best_y * scale


def _reduced(problem: AssignmentProblem, coeff: np.ndarray, scale: float, y: np.ndarray
             ) -> np.ndarray:
    """(N, M+1) reduced costs in units of ``scale`` at prices y (same units), deferral last."""
    m = problem.num_capacity_rows
    r = np.where(problem.eligible, problem.cost_usd / scale + y[:m][problem.rows]
                 - y[m:][problem.group][:, None] * coeff, np.inf)
    return np.concatenate([r, problem.deferral_penalty_usd[:, None] / scale], axis=1)


def _misfit(problem: AssignmentProblem, coeff: np.ndarray, scale: float, capacity: np.ndarray,
            y: np.ndarray) -> float:
    """How far the hard choices at prices y are from feasible, in jobs: capacity overfill plus
    each quality row's deficit over the typical |p - alpha|."""
    m = problem.num_models
    best = _reduced(problem, coeff, scale, y).argmin(axis=1)
    on = best < m
    over = np.maximum(problem.load(np.where(on, best, -1)) - capacity, 0.0).sum()
    has_row = ~np.isnan(problem.alpha)
    if not has_row.any():
        return float(over)
    rows = np.flatnonzero(on)
    gain = coeff[rows, best[rows]]
    surplus = np.bincount(problem.group[rows], weights=gain, minlength=problem.alpha.size) + settled_surplus(problem)
    typical = max(float(np.abs(coeff).mean()), 1e-6)
    deficit = np.maximum(-surplus[has_row], 0.0).sum() / typical
    return float(over + deficit)


def _checked(whole: SmoothDual, y: np.ndarray, target: np.ndarray, tau: float
             ) -> np.ndarray | None:
    """``target`` (the optimum of the dual restricted to the live jobs) or the first point
    halfway back to y at which D_tau over every job is no lower than at y; None if none is.

    The refit's saturated jobs enter as constants, which holds only while they stay saturated;
    past that the restricted dual can climb without bound (saturated jobs that overfill a model
    make its price look worth raising forever), so its optimum is only a proposal. A proposal
    that cannot have closed any saturated job's LIVE_TAUS * tau gap to its next option (see
    _gap_shift) is the full dual's too and stands unchecked: the usual case, at no extra pass."""
    step = target - y
    if _gap_shift(step, whole.m) <= LIVE_TAUS * tau:
        return target
    value = whole.evaluate(y, tau, derivatives=False)[0]
    for _ in range(MAX_HALVINGS):
        if whole.evaluate(y + step, tau, derivatives=False)[0] >= value - 1e-12 * abs(value):
            return y + step
        step = step / 2
    return None


def _gap_shift(step: np.ndarray, m: int) -> float:
    """The most a price step can change the gap between two options of any job. Between two
    models: the spread of the capacity price steps (a step common to all of them moves no such
    gap) plus the largest quality price step (|p_ij - p_ik| <= 1). Between a model and deferral:
    the largest capacity price step plus the largest quality price step (|p - alpha| <= 1)."""
    mu, lam = step[:m], step[m:]
    quality = float(np.abs(lam).max(initial=0.0))
    between_models = float(mu.max() - mu.min()) if m else 0.0
    to_deferral = float(np.abs(mu).max(initial=0.0))
    return max(between_models, to_deferral) + quality


def _refit(problem: AssignmentProblem, coeff: np.ndarray, scale: float, capacity: np.ndarray,
           y: np.ndarray, tau: float, whole: SmoothDual) -> np.ndarray:
    """Newton on D_tau over the live jobs (within LIVE_TAUS * tau of a tie), the saturated ones
    entering as constants; refit until no saturated job would change its mind."""
    n, m, g = problem.num_jobs, problem.num_models, problem.alpha.size
    settled = settled_surplus(problem)
    prev_best = np.full(n, -1)
    prev_live = np.zeros(n, dtype=bool)
    for _ in range(MAX_REFITS):
        r = _reduced(problem, coeff, scale, y)
        two = np.partition(r, 1, axis=1)[:, :2]
        live = (two[:, 1] - two[:, 0]) < LIVE_TAUS * tau
        best = r.argmin(axis=1)
        if not (live & ~prev_live).any() and (best[~live] == prev_best[~live]).all():
            break
        live |= prev_live
        sat = np.flatnonzero(~live & (best < m))
        saturated_plan = np.full(n, -1)
        saturated_plan[sat] = best[sat]
        counts = problem.load(saturated_plan).astype(float)
        offset = np.bincount(problem.group[sat], weights=coeff[sat, best[sat]], minlength=g) + settled
        fine = SmoothDual(problem, coeff, scale, capacity - counts, offset, np.flatnonzero(live))
        moved = _checked(whole, y, _newton(fine, y, tau, 1e-6), tau)
        if moved is None:
            # The live jobs alone cannot place the prices (saturated ones would change their
            # minds on the way, so the prices are far from this tau's optimum): leave the rest
            # to the core LP, which prices exactly.
            break
        y = moved
        prev_best, prev_live = best, live
    return y


def _stakes(problem: AssignmentProblem, model_cost: np.ndarray) -> np.ndarray:
    """(N,) what each job saves by taking its best model at ``model_cost`` (N, M) instead of
    being deferred: inf for a must-assign job, -inf for one with no eligible model."""
    best = np.where(problem.eligible, model_cost, np.inf).min(axis=1)
    with np.errstate(invalid="ignore"):
        stake = problem.deferral_penalty_usd - best
    stake[np.isnan(stake)] = -np.inf
    return stake


def _level(stake: np.ndarray, slots: int) -> float:
    """The capacity price that schedules exactly the ``slots`` largest stakes: midway between the
    last one in and the first one out (the dual is flat in between)."""
    ranked = -np.partition(-stake, (slots - 1, slots))[[slots - 1, slots]]
    inside, outside = float(ranked[0]), float(ranked[1])
    if not np.isfinite(inside):      # must-assign jobs fill every slot
        return max(outside, 0.0) + 1.0
    return max((inside + outside) / 2, 0.0)


def _short_of_capacity(problem: AssignmentProblem, capacity: np.ndarray) -> np.ndarray | None:
    """Stakes at zero prices if more jobs want a model than there are slots, else None."""
    stake = _stakes(problem, problem.cost_usd)
    slots = int(capacity.sum())
    return stake if int((stake > 0).sum()) > slots and slots < problem.num_jobs else None


def capacity_short(problem: AssignmentProblem, capacity: np.ndarray) -> bool:
    """More jobs would take a model at zero prices than there are slots: deferral is the usual
    outcome and the capacity prices sit at the level of the deferral penalties."""
    return _short_of_capacity(problem, capacity) is not None


def _short_prices(problem: AssignmentProblem, coeff: np.ndarray, scale: float,
                  capacity: np.ndarray, stake: np.ndarray) -> np.ndarray:
    """Prices when more jobs want a model than there are slots (see the module doc)."""
    n, m = problem.num_jobs, problem.num_capacity_rows
    slots = int(capacity.sum())
    if slots == 0:
        # No model takes anything: any price above every stake says so.
        return np.concatenate([np.full(m, max(float(stake[np.isfinite(stake)].max(initial=0.0)),
                                              0.0) + scale), np.zeros(problem.alpha.size)])
    level = _level(stake, slots)
    reach = min(n, slots + max(PLACING_EXTRA_JOBS, int(PLACING_EXTRA_SHARE * slots)))
    rows = np.sort(np.argpartition(-stake, reach - 1)[:reach])
    placing = subproblem(problem, rows, problem.deferral_penalty_usd[rows] - level)
    y = smooth_prices(placing, coeff[rows], scale, capacity)
    mu, lam = y[:m], y[m:]
    # Re-centre the level at these model and quality prices, over every job.
    offer = problem.cost_usd + mu[problem.rows] - lam[problem.group][:, None] * coeff
    shift = _level(_stakes(problem, offer), slots)
    return np.concatenate([mu + shift, lam])
