"""The assignment LP/MILP over a subset of jobs, built as a sparse matrix and solved with highspy.

Jobs outside ``free`` keep a fixed choice and enter only through the right-hand sides (capacity
they use, quality they add), as do each group's settled jobs. With ``elastic_penalty`` every capacity and quality row gets a slack
priced at that penalty, so the model is feasible whatever was fixed; a positive slack at the
optimum then proves the rows cannot all hold. Costs are divided by ``cost_scale`` before HiGHS
sees them: its tolerances are absolute (1e-7), and raw costs of 1e-5 USD would sit under them.
"""
from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from scheduler.optimizer.problem import AssignmentProblem, settled_surplus


@dataclass(frozen=True)
class Columns:
    job: np.ndarray    # (K,) global job index of each column
    model: np.ndarray  # (K,) model index; -1 = the deferral column


@dataclass(frozen=True)
class HighsResult:
    ok: bool                 # a primal solution exists (optimal, or an incumbent at the limit)
    proven: bool             # HiGHS proved optimality (within its gap tolerance)
    x: np.ndarray            # (K,) column values
    columns: Columns
    objective: float         # scaled back to USD, fixed jobs not included
    bound: float             # LP value or MIP dual bound, scaled back, fixed jobs not included
    mu: np.ndarray           # (R,) capacity row prices >= 0, USD
    lam: np.ndarray          # (G,) quality prices >= 0, USD (0 for groups without a row)
    slack: float             # total elastic slack at the solution (0 without elastic rows)


def quality_coeff(problem: AssignmentProblem) -> np.ndarray:
    """(N, M) p_ij - alpha_g for jobs of groups with a target, 0 for the others."""
    alpha = problem.alpha[problem.group]
    return np.where(np.isnan(alpha)[:, None], 0.0, problem.p_success - alpha[:, None])


def cost_scale(problem: AssignmentProblem) -> float:
    """A typical magnitude of the objective coefficients, to bring them near 1."""
    c = np.abs(problem.cost_usd[problem.eligible])
    c = c[np.isfinite(c) & (c > 0)]
    return float(np.median(c)) if c.size else 1.0


def solve_subset(
    problem: AssignmentProblem,
    free: np.ndarray,
    choice: np.ndarray,
    *,
    coeff: np.ndarray,
    scale: float,
    integer: bool = False,
    elastic_penalty: float | None = None,
    time_limit_s: float | None = None,
    gap_rel: float | None = None,
    gap_abs: float | None = None,
    start: np.ndarray | None = None,
) -> HighsResult:
    """Solve for the jobs in ``free`` with every other job held at ``choice`` (-1 = deferred);
    ``start`` (N,) is a feasible plan handed to the MIP as its first incumbent."""
    n, num_cap = problem.num_jobs, problem.num_capacity_rows
    cap = problem.capacity.astype(float)
    rows_q = np.flatnonzero(~np.isnan(problem.alpha))
    num_g = problem.alpha.size
    q_pos = np.full(num_g, -1)
    q_pos[rows_q] = np.arange(rows_q.size)

    is_free = np.zeros(n, dtype=bool)
    is_free[free] = True
    fixed_on = (~is_free) & (choice >= 0)
    used = problem.load(np.where(fixed_on, choice, -1)).astype(float)
    q_fixed = settled_surplus(problem)
    np.add.at(q_fixed, problem.group[fixed_on], coeff[np.flatnonzero(fixed_on), choice[fixed_on]])

    local = np.full(n, -1)
    local[free] = np.arange(free.size)
    fi, fj = np.nonzero(problem.eligible[free])
    gi = free[fi]
    defer = free[np.isfinite(problem.deferral_penalty_usd[free])]
    k_x, k_d = gi.size, defer.size
    f, nq = free.size, rows_q.size
    # Row order: one assignment row per free job, then capacity rows, then quality rows.
    qrow = q_pos[problem.group[gi]]
    has_q = qrow >= 0
    r = [local[gi], f + problem.rows[fj], (f + num_cap + qrow)[has_q], local[defer]]
    c = [np.arange(k_x), np.arange(k_x), np.flatnonzero(has_q), k_x + np.arange(k_d)]
    v = [np.ones(k_x), np.ones(k_x), coeff[gi, fj][has_q], np.ones(k_d)]
    costs = [problem.cost_usd[gi, fj] / scale, problem.deferral_penalty_usd[defer] / scale]
    col_upper = [np.ones(k_x + k_d)]
    num_slack = 0
    if elastic_penalty is not None:
        num_slack = num_cap + nq
        k0 = k_x + k_d
        r += [f + np.arange(num_cap), f + num_cap + np.arange(nq)]
        c += [k0 + np.arange(num_cap), k0 + num_cap + np.arange(nq)]
        v += [-np.ones(num_cap), np.ones(nq)]
        costs.append(np.full(num_slack, elastic_penalty / scale))
        col_upper.append(np.full(num_slack, np.inf))
    num_col = k_x + k_d + num_slack
    num_row = f + num_cap + nq
    a = sp.csc_matrix(
        (np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(num_row, num_col)
    )
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = num_col, num_row
    lp.col_cost_ = np.concatenate(costs)
    lp.col_lower_ = np.zeros(num_col)
    lp.col_upper_ = np.concatenate(col_upper)
    lp.row_lower_ = np.concatenate([np.ones(f), np.full(num_cap, -highspy.kHighsInf), -q_fixed[rows_q]])
    lp.row_upper_ = np.concatenate([np.ones(f), cap - used, np.full(nq, highspy.kHighsInf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    if integer:
        integrality = np.full(num_col, highspy.HighsVarType.kInteger)
        integrality[k_x + k_d:] = highspy.HighsVarType.kContinuous
        lp.integrality_ = list(integrality)

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    # One thread: HiGHS's MIP search is serial anyway, and one thread keeps runs reproducible
    # and leaves the other cores to the tick's neighbours.
    h.setOptionValue("threads", 1)
    if time_limit_s is not None:
        h.setOptionValue("time_limit", float(max(time_limit_s, 0.01)))
    if gap_rel is not None:
        h.setOptionValue("mip_rel_gap", float(gap_rel))
    if gap_abs is not None:
        h.setOptionValue("mip_abs_gap", float(gap_abs) / scale)
    h.passModel(lp)
    if start is not None and integer:
        cols_job = np.concatenate([gi, defer])
        cols_model = np.concatenate([fj, np.full(k_d, -1)])
        sol = highspy.HighsSolution()
        sol.col_value = np.concatenate(
            [(start[cols_job] == cols_model).astype(float), np.zeros(num_slack)])
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    columns = Columns(
        job=np.concatenate([gi, defer]), model=np.concatenate([fj, np.full(k_d, -1)])
    )
    ok = int(info.primal_solution_status) == int(highspy.SolutionStatus.kSolutionStatusFeasible)
    proven = status == highspy.HighsModelStatus.kOptimal
    empty = np.zeros(0)
    if not ok:
        return HighsResult(False, False, empty, columns, np.inf, -np.inf, np.zeros(num_cap), np.zeros(num_g), 0.0)
    sol = h.getSolution()
    x_all = np.asarray(sol.col_value)
    mu = np.zeros(num_cap)
    lam = np.zeros(num_g)
    if not integer:
        duals = np.asarray(sol.row_dual)
        mu = np.maximum(0.0, -duals[f:f + num_cap]) * scale
        lam[rows_q] = np.maximum(0.0, duals[f + num_cap:]) * scale
    slack = float(x_all[k_x + k_d:].sum()) if num_slack else 0.0
    objective = float(lp.col_cost_[: k_x + k_d] @ x_all[: k_x + k_d]) * scale
    if integer:
        bound = float(info.mip_dual_bound) * scale
    else:
        bound = objective if proven else -np.inf
    return HighsResult(True, proven, x_all[: k_x + k_d], columns, objective, bound, mu, lam, slack)
