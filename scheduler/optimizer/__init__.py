"""Pure constrained assignment: AssignmentProblem in, AssignmentSolution out.

``solve`` validates the problem, makes it feasible in a stated order (relax.py), runs the chosen
solver and reports the plan with its objective, a proven lower bound and what was relaxed.
Methods: "fast" (Lagrangian prices + core LP + repair, fast.py) for any window size, "exact" (the
MILP through PuLP with backend "highs" or "cbc", or "exact-highspy" without PuLP) for small windows
and as the reference.
"""
from __future__ import annotations

import time

import numpy as np

from scheduler.errors import InvalidRequest
from scheduler.optimizer.plan_check import objective_usd, violations
from scheduler.optimizer.problem import AssignmentProblem, AssignmentSolution, SolveStatus
from scheduler.optimizer.relax import relax
from scheduler.optimizer.solvers import SOLVERS, Solver, SolverOutput
from scheduler.optimizer.validate import validate_problem

# A plan within this relative distance of its bound is reported as optimal.
OPTIMAL_GAP = 1e-7


def solve(
    problem: AssignmentProblem,
    method: str = "fast",
    *,
    backend: str = "highs",
    time_limit_s: float = 60.0,
) -> AssignmentSolution:
    """Solve one window. ``method`` is "fast", "exact" (with ``backend`` "highs" or "cbc") or any
    key of SOLVERS. Raises InvalidRequest for a malformed problem; an infeasible one is relaxed,
    never raised (see relax.py)."""
    validate_problem(problem)
    key = f"exact-{backend}" if method == "exact" else method
    if key not in SOLVERS:
        raise InvalidRequest(f"unknown optimizer method {key!r}; known: {', '.join(SOLVERS)}")
    if time_limit_s <= 0:
        raise InvalidRequest("time_limit_s must be > 0")
    start = time.perf_counter()
    relaxed = relax(problem)
    if problem.num_jobs == 0 or problem.num_models == 0:
        out = SolverOutput(relaxed.witness, objective_usd(relaxed.problem, relaxed.witness), True,
                           key)
    else:
        out = SOLVERS[key](relaxed, time_limit_s=time_limit_s)
    broken = violations(relaxed.problem, out.model_index)
    if broken:
        # A solver bug must not ship an infeasible plan: the witness is feasible by construction.
        out = SolverOutput(relaxed.witness, out.bound, False,
                           f"{out.solver} (plan broke {broken[0]}: witness plan)")
    objective = objective_usd(relaxed.problem, out.model_index)
    bound = min(out.bound, objective)
    proven = out.proven or objective - bound <= OPTIMAL_GAP * max(abs(objective), 1e-12)
    if relaxed.relaxations:
        status = SolveStatus.RELAXED
    else:
        status = SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE
    return AssignmentSolution(
        model_index=np.asarray(out.model_index, dtype=np.int64),
        objective_usd=objective,
        lower_bound_usd=bound,
        status=status,
        solver=out.solver,
        solve_time_s=time.perf_counter() - start,
        relaxations=relaxed.relaxations,
        group_alpha_used=relaxed.alpha_used,
    )


__all__ = [
    "SOLVERS",
    "AssignmentProblem",
    "AssignmentSolution",
    "SolveStatus",
    "Solver",
    "solve",
    "validate_problem",
]
