"""The exact MILP, through PuLP with HiGHS or CBC, or straight through highspy.

The model is the one in problem.py, one binary per eligible (job, model) pair and one per
deferrable job; a must-assign job simply has no deferral variable. It is the reference the fast
path is measured against, and the small-window solver. Both PuLP back-ends get the same time limit
and relative gap (default 1e-4, HiGHS's own default) and report the proven lower bound: HiGHS's
MIP dual bound, CBC's "Lower bound" from its log (at a proven optimum, objective x (1 - gap)).
"exact-highspy" builds the same model as a sparse matrix (highs_model.py): same solver, no PuLP
objects, so it scales to the 50k-job windows where PuLP's per-variable Python objects dominate.
Costs are divided by a typical cost before any solver sees them (see highs_model.py).
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import pulp

from scheduler.optimizer.highs_model import cost_scale, quality_coeff, solve_subset
from scheduler.optimizer.problem import AssignmentProblem, settled_surplus

DEFAULT_GAP_REL = 1e-4


@dataclass(frozen=True)
class ExactResult:
    model_index: np.ndarray | None   # None: no integer solution within the time limit
    bound: float                     # proven lower bound on the optimum, USD (-inf if none)
    proven: bool                     # optimal within gap_rel


def _build(problem: AssignmentProblem, scale: float
           ) -> tuple[pulp.LpProblem, list[pulp.LpVariable], np.ndarray, np.ndarray]:
    n = problem.num_jobs
    coeff = quality_coeff(problem)
    ji, mj = np.nonzero(problem.eligible)
    prob = pulp.LpProblem("assignment", pulp.LpMinimize)

    def add(name: str, low: float, up: float, cat: str) -> pulp.LpVariable:
        # PuLP 3.3 deprecates LpVariable(...) for prob.add_variable, which 2.x lacks.
        if hasattr(prob, "add_variable"):
            return prob.add_variable(name, low, up, cat=cat)
        return pulp.LpVariable(name, low, up, cat=cat)

    x = [add(f"x_{i}_{j}", 0, 1, cat=pulp.LpBinary) for i, j in zip(ji.tolist(), mj.tolist())]
    defer = np.flatnonzero(np.isfinite(problem.deferral_penalty_usd))
    d = {i: add(f"d_{i}", 0, 1, cat=pulp.LpBinary) for i in defer.tolist()}
    terms = list(zip(x, (problem.cost_usd[ji, mj] / scale).tolist()))
    terms += [(d[i], float(problem.deferral_penalty_usd[i] / scale)) for i in d]
    prob.setObjective(pulp.LpAffineExpression(terms))

    starts = np.searchsorted(ji, np.arange(n + 1))
    for i in range(n):
        row = [(x[k], 1.0) for k in range(starts[i], starts[i + 1])]
        if i in d:
            row.append((d[i], 1.0))
        prob.addConstraint(pulp.LpConstraint(pulp.LpAffineExpression(row), pulp.LpConstraintEQ,
                                             rhs=1.0), name=f"job_{i}")
    rj = problem.rows[mj]
    by_row = np.argsort(rj, kind="stable")
    num_cap = problem.num_capacity_rows
    for r, cols in enumerate(np.split(by_row, np.searchsorted(rj[by_row], np.arange(1, num_cap)))):
        expr = pulp.LpAffineExpression([(x[k], 1.0) for k in cols.tolist()])
        prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintLE,
                                             rhs=float(problem.capacity[r])), name=f"cap_{r}")
    a = coeff[ji, mj]
    gi = problem.group[ji]
    settled = settled_surplus(problem)
    for g in np.flatnonzero(~np.isnan(problem.alpha)):
        cols = np.flatnonzero(gi == g)
        expr = pulp.LpAffineExpression([(x[k], float(a[k])) for k in cols.tolist()])
        prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintGE, rhs=-float(settled[g])),
                           name=f"quality_{g}")
    return prob, x, ji, mj


def _plan(problem: AssignmentProblem, x: list[pulp.LpVariable], ji: np.ndarray, mj: np.ndarray
          ) -> np.ndarray | None:
    values = np.array([v.varValue if v.varValue is not None else np.nan for v in x])
    if np.isnan(values).any():
        return None
    plan = np.full(problem.num_jobs, -1)
    on = values > 0.5
    plan[ji[on]] = mj[on]
    return plan


def _cbc_bound(log: str, objective: float, gap_rel: float) -> tuple[float, bool]:
    """(lower bound, proven) from a CBC log, in the units CBC saw."""
    proven = "Result - Optimal solution found" in log
    found = re.search(r"Lower bound:\s+(-?[\d.eE+-]+)", log)
    if found:
        return float(found.group(1)), proven
    if proven:
        return objective - gap_rel * abs(objective), True
    return -np.inf, False


def solve_pulp(problem: AssignmentProblem, *, backend: str = "highs", time_limit_s: float = 60.0,
               gap_rel: float = DEFAULT_GAP_REL) -> ExactResult:
    """The MILP through PuLP; backend "highs" (highspy) or "cbc" (PULP_CBC_CMD, as ECCOS)."""
    scale = cost_scale(problem)
    prob, x, ji, mj = _build(problem, scale)
    if backend == "highs":
        solver = pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap_rel, threads=1)
        prob.solve(solver)
        model = prob.solverModel
        plan = _plan(problem, x, ji, mj) if prob.sol_status > 0 else None
        bound = float(model.getInfo().mip_dual_bound) * scale
        proven = prob.sol_status == pulp.LpSolutionOptimal
        return ExactResult(plan, bound if np.isfinite(bound) else -np.inf, proven)
    if backend != "cbc":
        raise ValueError(f"unknown backend {backend!r}: 'highs' or 'cbc'")
    fd, log_path = tempfile.mkstemp(suffix=".log", prefix="cbc-")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # PuLP 3.3 deprecates its bundled CBC for PuLP 4; the bundled binary is the one
            # ECCOS used and the one installed here, and pulp is pinned < 4.
            warnings.simplefilter("ignore", DeprecationWarning)
            # CBC's integer preprocessing once returned a plan it called optimal at 5.732 where
            # 4.946 was feasible (a 12-job window hypothesis found; tests/unit/test_optimizer_properties.py);
            # without it CBC agrees with HiGHS there and is no slower on 1k x 8 windows.
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel,
                                       logPath=log_path, options=["preprocess off"])
        prob.solve(solver)
        with open(log_path) as fh:
            log = fh.read()
    finally:
        os.unlink(log_path)
    plan = _plan(problem, x, ji, mj) if prob.sol_status > 0 else None
    objective = pulp.value(prob.objective) if plan is not None else np.inf
    bound, proven = _cbc_bound(log, float(objective or 0.0), gap_rel)
    return ExactResult(plan, bound * scale, proven and plan is not None)


def solve_highspy(problem: AssignmentProblem, *, time_limit_s: float = 60.0,
                  gap_rel: float = DEFAULT_GAP_REL) -> ExactResult:
    """The same MILP as a sparse matrix straight into highspy."""
    n = problem.num_jobs
    res = solve_subset(problem, np.arange(n), np.full(n, -1), coeff=quality_coeff(problem),
                       scale=cost_scale(problem), integer=True, time_limit_s=time_limit_s,
                       gap_rel=gap_rel)
    if not res.ok:
        return ExactResult(None, res.bound, False)
    plan = np.full(n, -1)
    on = res.x > 0.5
    plan[res.columns.job[on]] = res.columns.model[on]
    return ExactResult(plan, res.bound, res.proven)
