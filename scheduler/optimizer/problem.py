"""The assignment problem of one scheduling window, as plain arrays, and its solution.

This is the contract between the tick (which builds the arrays from live data) and the solvers
(which are pure: arrays in, a solution out; no database, no clock). Shapes: N jobs, M models
(columns: a fleet model, or a cascade strategy, see scheduler/cascade_columns.py), R capacity
rows, G quality groups.

    minimise   sum_ij cost_usd[i,j] x_ij + sum_i deferral_penalty_usd[i] d_i
    subject to sum_j x_ij + d_i = 1                                  every job i
               sum_i sum_{j: capacity_row[j] = r} x_ij <= capacity[r]
                                                                     every capacity row r
               sum_{i in g} sum_j (p_success[i,j] - alpha[g]) x_ij
                   + settled_p_sum[g] - settled_jobs[g] alpha[g] >= 0
                                                                     every group g with alpha
               x_ij = 0 where not eligible[i,j]

The quality row asks the mean predicted success of a group's jobs to reach alpha (ECCOS's
constraint, with deferred jobs left out of the mean rather than counted as failures). The mean
is over the jobs scheduled in this window *and* the group's ``settled`` jobs: those an earlier
tick already dispatched (a batch is planned over many ticks), which enter only as a constant.
Without them a job deferred to lift one tick's mean would, once its batch-mates had run, face a
row of its own that it can never meet. A job with deferral_penalty_usd = inf must be assigned
whenever it can be.

Without ``capacity_row`` every model has its own capacity row (R = M). With it, several columns
may draw on one row: a cascade strategy takes a slot of its first model now, the same slot the
model's direct column takes, so scarce capacity is shared between them rather than offered twice.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AssignmentProblem:
    cost_usd: np.ndarray              # (N, M) float: predicted cost of job i on model j
    p_success: np.ndarray             # (N, M) float in [0, 1]: predicted chance of a good answer
    capacity: np.ndarray              # (R,) int >= 0: jobs capacity row r can still take in this window
    eligible: np.ndarray              # (N, M) bool: False where floor, deadline, allow-list or budget exclude j
    group: np.ndarray                 # (N,) int in [0, G): the quality group of each job
    alpha: np.ndarray                 # (G,) float: mean-quality target per group; nan = no target
    deferral_penalty_usd: np.ndarray  # (N,) float >= 0: cost of leaving job i for a later tick; inf = never
    settled_jobs: np.ndarray | None = None   # (G,) int >= 0: the group's jobs earlier ticks dispatched; None = 0
    settled_p_sum: np.ndarray | None = None  # (G,) float >= 0: the sum of their predicted success; None = 0
    capacity_row: np.ndarray | None = None   # (M,) int in [0, R): the row each column draws on; None = its own

    @property
    def num_jobs(self) -> int:
        return int(self.cost_usd.shape[0])

    @property
    def num_models(self) -> int:
        return int(self.cost_usd.shape[1])

    @property
    def num_capacity_rows(self) -> int:
        return int(np.size(self.capacity))

    @property
    def rows(self) -> np.ndarray:
        """(M,) the capacity row of each column."""
        return np.arange(self.num_models) if self.capacity_row is None else np.asarray(self.capacity_row)

    def load(self, model_index: np.ndarray) -> np.ndarray:
        """(R,) the jobs a plan (model per job, -1 deferred) puts on each capacity row."""
        on = model_index[model_index >= 0]
        return np.bincount(self.rows[on], minlength=self.num_capacity_rows)

    def column_room(self, load: np.ndarray) -> np.ndarray:
        """(M,) whether each column's row has room left at ``load`` (R,)."""
        return (load < self.capacity)[self.rows]


def subproblem(problem: AssignmentProblem, rows: np.ndarray,
               deferral_penalty_usd: np.ndarray | None = None) -> AssignmentProblem:
    """The jobs ``rows`` of ``problem`` with the same models, capacities, groups and settled
    jobs (a group's row then counts only these jobs and its settled ones); optionally with other
    deferral penalties for them."""
    return AssignmentProblem(
        cost_usd=problem.cost_usd[rows],
        p_success=problem.p_success[rows],
        capacity=problem.capacity,
        eligible=problem.eligible[rows],
        group=problem.group[rows],
        alpha=problem.alpha,
        deferral_penalty_usd=(problem.deferral_penalty_usd[rows] if deferral_penalty_usd is None
                              else deferral_penalty_usd),
        settled_jobs=problem.settled_jobs,
        settled_p_sum=problem.settled_p_sum,
        capacity_row=problem.capacity_row,
    )


def settled(problem: AssignmentProblem) -> tuple[np.ndarray, np.ndarray]:
    """(G,) count and (G,) predicted-success sum of each group's settled jobs (zeros when none)."""
    if problem.settled_jobs is None or problem.settled_p_sum is None:
        return np.zeros(np.size(problem.alpha)), np.zeros(np.size(problem.alpha))
    return np.asarray(problem.settled_jobs, float), np.asarray(problem.settled_p_sum, float)


def settled_surplus(problem: AssignmentProblem, alpha: np.ndarray | None = None) -> np.ndarray:
    """(G,) the constant part of each quality row: settled_p_sum - settled_jobs * alpha (0 for
    groups without a target or without settled jobs), at ``alpha`` (default the problem's)."""
    alpha = problem.alpha if alpha is None else alpha
    count, total = settled(problem)
    return np.where(np.isnan(alpha), 0.0, total - count * alpha)


class SolveStatus(str, enum.Enum):
    OPTIMAL = "optimal"        # proven optimal (gap within solver tolerance)
    FEASIBLE = "feasible"      # feasible, gap reported by lower_bound_usd
    RELAXED = "relaxed"        # the stated constraints could not all hold; see relaxations


@dataclass(frozen=True)
class AssignmentSolution:
    model_index: np.ndarray           # (N,) int: chosen model per job, -1 = deferred
    objective_usd: float              # value of the objective at model_index
    lower_bound_usd: float            # proven lower bound on the optimum (for the gap)
    status: SolveStatus
    solver: str                       # e.g. "exact-highs", "fast-lagrangian"
    solve_time_s: float
    relaxations: tuple[str, ...] = field(default=())  # what was relaxed, in order, and why
    group_alpha_used: np.ndarray | None = None        # (G,) alpha actually enforced after relaxation

    @property
    def gap(self) -> float:
        """Relative optimality gap (objective - bound) / max(|objective|, tiny)."""
        return float((self.objective_usd - self.lower_bound_usd) / max(abs(self.objective_usd), 1e-12))
