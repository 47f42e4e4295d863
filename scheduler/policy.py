"""The scheduling policy: window + fleet state -> Plan, through the predictor and the optimizer.

For every (job, model) pair it predicts success, tokens, latency and cost; it then marks which
pairs are allowed (allow-list, a live worker with free capacity, the job's quality floor, its
cost cap, its deadline) and hands the rest to the constrained optimizer (cheapest plan meeting
each batch's mean-quality target alpha within each model's free capacity). Every assignment and
every deferral carries a reason a person can read. How urgent each waiting job is (the cost of
deferring it) is scheduler/urgency.py's, shared with the tick's choice of window.

With a ``CascadeModel`` (scheduler/cascade.py) the optimizer also sees cascade strategies ("run a
cheap model, escalate if the post-hoc p of its answer is low") as extra columns, and an assignment
may carry its escalation steps as data (``Assignment.cascade``).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scheduler.cascade import CascadeModel
from scheduler.cascade_columns import OptimizerColumns, cascade_assignment, with_cascades
from scheduler.estimates import WindowEstimates, estimate_window, free_capacity, seconds_until
from scheduler.fleet import Fleet
from scheduler.learning.exploration import NOT_PINNED, Exploration, Feedback, restrict_to_pinned
from scheduler.optimizer import AssignmentProblem, solve
from scheduler.plan import Assignment, Deferral, Ending, ModelState, Plan, WindowJob
from scheduler.urgency import deferral_penalty_usd, fair_share_penalty_usd, within_fair_share

# Small windows go to the exact MILP (one job is a large share of the cost there, and HiGHS proves
# optimality in well under a second); larger ones to the fast Lagrangian path (gap ~0.01% at 10k).
EXACT_MAX_JOBS = 64
EXACT_TIME_LIMIT_S = 2.0


# A deferred job's reason is stored only when it changes, so these texts say what blocks the job and
# nothing that changes from tick to tick (amounts and solver details go to the plan's notes).
CAPACITY_REASON = ("waiting: not enough free capacity or quality headroom this tick; its priority rises "
                   "the longer it waits")
BATCH_QUALITY_REASON = ("waiting: a model it may use has room, but running it now would pull its batch's mean "
                        "predicted quality below the batch's alpha; it runs once the batch's other jobs leave "
                        "enough headroom")
BATCH_BUDGET_REASON = ("waiting: its batch's max_cost_usd leaves too little for this job beside the others "
                       "planned (the batch's remaining budget is in the tick's notes)")
TENANT_BUDGET_REASON = ("waiting: its tenant's max_spend_usd leaves too little for this job beside the others "
                        "planned")
FAIR_SHARE_REASON = ("waiting: free capacity is shared by weight among the tenants with waiting jobs, and this "
                     "tenant's share is taken by its more urgent jobs this tick")
NO_LIVE_WORKER_REASON = "waiting: no live worker hosts any model it may use"
MIN_QUALITY_REASON = "waiting: min_quality is above every available model's predicted success"
MAX_COST_REASON = ("waiting: max_cost_usd, or what is left of its batch's or tenant's spend cap, is below every "
                   "suitable model's cost")
NEVER_PREFIX = "no model can ever serve this job:"


class Prediction(Protocol):
    @property
    def p_success(self) -> np.ndarray: ...

    @property
    def output_tokens(self) -> np.ndarray | None: ...


class Predictor(Protocol):
    @property
    def name(self) -> str: ...

    def predict(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> Prediction: ...


@dataclass(frozen=True)
class Eligibility:
    mask: np.ndarray              # (N, M) bool
    blocked_by: list[str | None]  # per job: why no model is eligible (None when one is)
    late: np.ndarray              # (N,) bool: no model meets the deadline; fastest one allowed
    never: list[str | None]       # per job: why no fleet model can ever serve it (None when one can)


class OptimizingPolicy:
    def __init__(self, fleet: Fleet, predictor: Predictor, *, method: str = "auto", horizon_s: float = 30.0,
                 exploration: Exploration | None = None, feedback: Feedback = Feedback(),
                 rng: np.random.Generator | None = None, backend: str = "highs",
                 time_limit_s: float | None = None, cascade: CascadeModel | None = None) -> None:
        self.fleet = fleet
        self.cascade = cascade              # None: direct models only; else cascade strategies as columns too
        self.backend = backend              # the exact MILP's backend (optimizer.solve)
        self.time_limit_s = time_limit_s    # None: EXACT_TIME_LIMIT_S for exact, 60 s for fast
        self.predictor = predictor
        self.method = method
        self.horizon_s = horizon_s
        self.exploration = exploration
        self.feedback = feedback
        self.rng = rng if rng is not None else np.random.default_rng()

    @property
    def name(self) -> str:
        return f"{self.predictor.name}+{self.method}"

    def plan(self, jobs: Sequence[WindowJob], states: Sequence[ModelState], now: dt.datetime,
             tick_id: str) -> Plan:
        past_deadline = [j for j in jobs if j.deadline_at is not None and j.deadline_at <= now]
        live = [j for j in jobs if j.deadline_at is None or j.deadline_at > now]
        expired = tuple(Deferral(j.id, "deadline passed before the job could be scheduled", Ending.EXPIRED)
                        for j in past_deadline)
        if not live:
            return Plan(tick_id, now, self.name, (), expired)
        prediction = self.predictor.predict([j.prompt_text for j in live], keys=[j.id for j in live])
        est = estimate_window(live, self.fleet, states, prediction.p_success, prediction.output_tokens)
        capacity = np.array([free_capacity(spec, state, self.horizon_s, float(np.median(est.latency_s[:, j])))
                             for j, (spec, state) in enumerate(zip(self.fleet.models, states, strict=True))])
        hosted = np.array([state.live_workers > 0 for state in states], dtype=bool)
        eligibility = _eligibility(live, self.fleet, hosted, capacity, est, now)
        # A job back from a cascade's review runs the model its cascade names next, and nothing else.
        eligibility, escalated = _escalations(live, self.fleet.names, eligibility, hosted, capacity, est, now)
        pinned = np.full(len(live), NOT_PINNED)
        if self.exploration is not None:
            counts = self.feedback.label_counts or (0,) * len(self.fleet.models)
            pinned = self.exploration.pin(eligibility.mask, counts, self.rng, room=capacity)
            pinned[escalated] = NOT_PINNED
        group, alpha = _quality_groups(live)
        group[escalated] = 0   # its quality was promised when its cascade was planned
        base_penalty = _deferral_penalty(live, est, now)
        # The slots the window's jobs can use: a model's free capacity counts only as far as jobs
        # may run there (a tenant's quota of slots nobody of it may use would be no share at all).
        usable_slots = int(np.minimum(capacity, eligibility.mask.sum(axis=0)).sum())
        inside_share = within_fair_share([j.tenant for j in live], {j.tenant: j.tenant_weight for j in live},
                                         np.asarray(eligibility.mask.any(axis=1)), base_penalty, usable_slots)
        penalty = fair_share_penalty_usd(base_penalty, inside_share)
        penalty = np.where([j.must_place for j in live], np.inf, penalty)
        # The promise check: where recent outcomes fell short of the predicted p, ask for more.
        alpha = np.minimum(alpha + self.feedback.promise_gap, 1.0)
        settled_jobs, settled_p_sum = _settled(live, group, alpha)
        columns = OptimizerColumns(est.cost_usd, est.p_success, capacity, restrict_to_pinned(eligibility.mask, pinned))
        if self.cascade is not None:
            columns = with_cascades(columns, self.cascade, live, est, pinned)
        problem = AssignmentProblem(
            cost_usd=columns.cost_usd, p_success=columns.p_success, capacity=columns.capacity,
            capacity_row=columns.capacity_row,
            eligible=columns.eligible, group=group, alpha=alpha, deferral_penalty_usd=penalty,
            settled_jobs=settled_jobs, settled_p_sum=settled_p_sum)
        method = self.method
        if method == "auto":
            method = "exact" if len(live) <= EXACT_MAX_JOBS else "fast"
        time_limit_s = self.time_limit_s or (EXACT_TIME_LIMIT_S if method == "exact" else 60.0)
        solution = solve(problem, method=method, backend=self.backend, time_limit_s=time_limit_s)
        chosen, over_budget = _within_budgets(live, solution.model_index, columns.cost_usd)
        held_for_quality = _held_for_quality(problem, solution.model_index)
        assignments, deferrals = [], list(expired)
        reasons = _Reasons(est, eligibility, self.fleet, pinned, self.feedback.promise_gap)
        names = self.fleet.names
        chosen_list, solved_list = chosen.tolist(), solution.model_index.tolist()
        late_list = eligibility.late.tolist()
        for i, job in enumerate(live):
            j = chosen_list[i]
            if eligibility.never[i] is not None:
                deferrals.append(Deferral(job.id, eligibility.never[i] or "", Ending.FAILED))
            elif late_list[i] and job.expire_on_deadline_miss:
                deferrals.append(Deferral(job.id, "no model can finish before the deadline; expired as asked",
                                          Ending.EXPIRED))
            elif j >= len(names):
                assignments.append(cascade_assignment(job, i, j - len(names), columns, self.cascade, names,
                                                       reasons.constraint(job)))
            elif j >= 0 and job.escalate_to is not None:
                assignments.append(Assignment(
                    job.id, names[j], reasons.p[i][j], reasons.cost[i][j], _escalation_reason(job, reasons, i, j),
                    late=late_list[i], cascade=job.cascade_rest if job.cascade_allowed else ()))
            elif j >= 0:
                assignments.append(Assignment(
                    job.id, names[j], reasons.p[i][j], reasons.cost[i][j], reasons(i, j, job),
                    exploring=reasons.pinned[i] == j, late=late_list[i]))
            elif solved_list[i] >= 0:
                deferrals.append(Deferral(job.id, over_budget[i] or BATCH_BUDGET_REASON))
            elif eligibility.blocked_by[i] is not None:
                deferrals.append(Deferral(job.id, eligibility.blocked_by[i] or ""))
            elif not inside_share[i]:
                deferrals.append(Deferral(job.id, FAIR_SHARE_REASON))
            else:
                deferrals.append(Deferral(job.id, BATCH_QUALITY_REASON if held_for_quality[i] else CAPACITY_REASON))
        return Plan(tick_id, now, self.name, tuple(assignments), tuple(deferrals),
                    objective_usd=solution.objective_usd, lower_bound_usd=solution.lower_bound_usd,
                    solver=method, solver_status=solution.status.value, solve_s=solution.solve_time_s,
                    notes=(f"solver {solution.solver} {solution.status.value} in {solution.solve_time_s * 1e3:.1f} ms",
                           "capacity " + ", ".join(f"{m.name}={int(c)}" for m, c in zip(self.fleet.models, capacity,
                                                                                       strict=True)),
                           f"exploring {int((pinned != NOT_PINNED).sum())} jobs; promise margin "
                           f"+{self.feedback.promise_gap:.3f}",
                           *([f"cascade strategies offered: {columns.num_cascades}"] if self.cascade else []),
                           *_budget_notes(live),
                           *solution.relaxations))


ESCALATION_GONE_TEXT = "its cascade's next model {model} is no longer in the fleet; the best earlier answer is accepted"


def _escalations(jobs: Sequence[WindowJob], names: Sequence[str], eligibility: Eligibility, hosted: np.ndarray,
                 capacity: np.ndarray, est: WindowEstimates, now: dt.datetime) -> tuple[Eligibility, np.ndarray]:
    """Restrict each job back from a cascade's review (``escalate_to``) to that one model.

    The model was chosen when the cascade was planned (allow-list and floor included), so only
    what can change since counts: a live worker, free capacity, the job's and its budgets' caps.
    A deadline it cannot meet any more does not stop it (it runs late, as other late jobs do).
    Returns the new eligibility and the (N,) mask of escalated jobs: their quality was promised
    when the cascade was planned, so the caller keeps them out of their batch's alpha."""
    escalated = np.array([job.escalate_to is not None for job in jobs], dtype=bool)
    if not escalated.any():
        return eligibility, escalated
    column = {name: j for j, name in enumerate(names)}
    mask, late = eligibility.mask.copy(), eligibility.late.copy()
    blocked_by, never = list(eligibility.blocked_by), list(eligibility.never)
    for i in np.flatnonzero(escalated).tolist():
        job = jobs[i]
        target = str(job.escalate_to)
        mask[i] = False
        blocked_by[i] = never[i] = None
        if target not in column:
            never[i] = ESCALATION_GONE_TEXT.format(model=target)
            continue
        j = column[target]
        cap = min(np.inf if limit is None else limit
                  for limit in (job.max_cost_usd, job.batch_budget_left_usd, job.tenant_budget_left_usd))
        if not hosted[j]:
            blocked_by[i] = f"waiting: its escalation must run on {target}, and no live worker hosts it"
        elif capacity[j] <= 0:
            blocked_by[i] = f"waiting: its escalation must run on {target}, which has no free capacity this tick"
        elif est.cost_usd[i, j] > cap:
            blocked_by[i] = (f"waiting: its escalation must run on {target}, and max_cost_usd or what is left of "
                             "its batch's or tenant's spend cap is below that model's cost")
        else:
            mask[i, j] = True
            late[i] = bool(est.finish_s[i, j] > seconds_until(job.deadline_at, now))
    return Eligibility(mask, blocked_by, late, never), escalated


def _escalation_reason(job: WindowJob, reasons: _Reasons, i: int, j: int) -> str:
    ran = ", ".join(job.models_run) or "the earlier model"
    rest = f"; then {' -> '.join(step.next_model for step in job.cascade_rest)} while still weak" \
        if job.cascade_rest and job.cascade_allowed else ""
    late = "; WILL MISS DEADLINE" if reasons.late[i] else ""
    return (f"escalation: the answer of {ran} was judged too weak, so its cascade runs {job.escalate_to}{rest}: "
            f"{reasons.names[j]} p={reasons.p[i][j]:.2f} est ${reasons.cost[i][j]:.6f} "
            f"{reasons.latency[i][j]:.1f}s{late}")


def _deferral_penalty(jobs: Sequence[WindowJob], est: WindowEstimates, now: dt.datetime) -> np.ndarray:
    ages_min = np.array([(now - j.created_at).total_seconds() / 60.0 for j in jobs])
    slack_s = np.array([seconds_until(j.deadline_at, now) for j in jobs]) - est.finish_s.min(axis=1)
    return deferral_penalty_usd(ages_min, slack_s)


def _within_budgets(jobs: Sequence[WindowJob], model_index: np.ndarray, cost_usd: np.ndarray
                    ) -> tuple[np.ndarray, list[str | None]]:
    """Drop assignments (oldest jobs keep theirs) until each capped batch's and each capped
    tenant's predicted spend fits what is left of its cap, so dispatched work never exceeds a
    budget. Returns the plan and, per dropped job, which budget dropped it."""
    chosen = model_index.copy()
    dropped: list[str | None] = [None] * len(jobs)
    batch_left = {j.batch_id: j.batch_budget_left_usd for j in jobs if j.batch_budget_left_usd is not None}
    tenant_left = {j.tenant: j.tenant_budget_left_usd for j in jobs if j.tenant_budget_left_usd is not None}
    for i in sorted(range(len(jobs)), key=lambda i: jobs[i].created_at):
        job = jobs[i]
        if chosen[i] < 0:
            continue
        cost = float(cost_usd[i, chosen[i]])
        if job.batch_id in batch_left and cost > batch_left[job.batch_id]:
            chosen[i], dropped[i] = -1, BATCH_BUDGET_REASON
        elif job.tenant in tenant_left and cost > tenant_left[job.tenant]:
            chosen[i], dropped[i] = -1, TENANT_BUDGET_REASON
        else:
            if job.batch_id in batch_left:
                batch_left[job.batch_id] -= cost
            if job.tenant in tenant_left:
                tenant_left[job.tenant] -= cost
    return chosen, dropped


def _eligibility(jobs: Sequence[WindowJob], fleet: Fleet, hosted: np.ndarray, capacity: np.ndarray,
                 est: WindowEstimates, now: dt.datetime) -> Eligibility:
    names = fleet.names
    n, m = est.cost_usd.shape
    allowed = np.array([[job.allowed_models is None or name in job.allowed_models for name in names]
                        for job in jobs], dtype=bool).reshape(n, m)
    live = hosted[None, :] & allowed
    serving = (capacity > 0)[None, :] & live
    floor = np.array([job.min_quality if job.min_quality is not None else 0.0 for job in jobs])
    good_enough = serving & (est.p_success >= floor[:, None])
    # A job's own cap, and its batch's remaining budget: no single run may exceed either.
    cap = np.array([min(np.inf if limit is None else limit for limit in
                        (job.max_cost_usd, job.batch_budget_left_usd, job.tenant_budget_left_usd))
                    for job in jobs])
    affordable = good_enough & (est.cost_usd <= cap[:, None])
    time_left = np.array([seconds_until(job.deadline_at, now) for job in jobs])
    on_time = affordable & (est.finish_s <= time_left[:, None])
    # A job no model can finish in time still runs, on the fastest model otherwise allowed.
    late = ~on_time.any(axis=1) & affordable.any(axis=1)
    mask = on_time.copy()
    for i in np.flatnonzero(late):
        finish = np.where(affordable[i], est.finish_s[i], np.inf)
        mask[i, int(np.argmin(finish))] = True
    never = _never_servable(jobs, names, allowed, est)
    steps = [(allowed, "none of its allowed_models is in the fleet"),
             (live, NO_LIVE_WORKER_REASON),
             (serving, CAPACITY_REASON),
             (good_enough, MIN_QUALITY_REASON),
             (affordable, MAX_COST_REASON)]
    blocked_by: list[str | None] = [None] * n
    for i in np.flatnonzero(~mask.any(axis=1)):
        blocked_by[i] = next(text for step, text in steps if not step[i].any())
    return Eligibility(mask, blocked_by, late, never)


def _never_servable(jobs: Sequence[WindowJob], names: Sequence[str], allowed: np.ndarray,
                    est: WindowEstimates) -> list[str | None]:
    """Per job, why no model of the fleet can ever serve it as submitted (None when one can):
    none of its allowed models is in the fleet, or its own max_cost_usd is below what every
    allowed model charges for the shortest possible answer (one output token). Such a job fails
    at once instead of waiting for capacity that would not help."""
    own_cap = np.array([np.inf if job.max_cost_usd is None else job.max_cost_usd for job in jobs])
    floor = np.where(allowed, est.min_cost_usd, np.inf)
    cheapest = floor.argmin(axis=1)
    cheapest_cost = floor[np.arange(len(jobs)), cheapest]
    never: list[str | None] = [None] * len(jobs)
    for i in np.flatnonzero(~allowed.any(axis=1)):
        never[i] = f"{NEVER_PREFIX} none of its allowed_models is in the fleet ({', '.join(names)})"
    for i in np.flatnonzero(allowed.any(axis=1) & (cheapest_cost > own_cap)):
        never[i] = (f"{NEVER_PREFIX} max_cost_usd ${own_cap[i]:.8f} is below every allowed model's cost for a "
                    f"one-token answer (cheapest: {names[cheapest[i]]} ${cheapest_cost[i]:.8f})")
    return never


def _quality_groups(jobs: Sequence[WindowJob]) -> tuple[np.ndarray, np.ndarray]:
    """Group 0 holds jobs without a target; each batch with an alpha is its own group."""
    index: dict[str, int] = {}
    alphas = [np.nan]
    group = np.zeros(len(jobs), dtype=int)
    for i, job in enumerate(jobs):
        if job.batch_alpha is None or job.batch_id is None:
            continue
        if job.batch_id not in index:
            index[job.batch_id] = len(alphas)
            alphas.append(job.batch_alpha)
        group[i] = index[job.batch_id]
    return group, np.array(alphas, dtype=float)


def _held_for_quality(problem: AssignmentProblem, model_index: np.ndarray) -> np.ndarray:
    """(N,) deferred jobs of a batch with a target for which some allowed option still has room in
    the plan: a deferral costs dollars and a run micro-dollars, so what held such a job back is
    its batch's quality row, not capacity."""
    room = problem.eligible & problem.column_room(problem.load(model_index))[None, :]
    has_target = ~np.isnan(problem.alpha[problem.group])
    return (model_index < 0) & has_target & room.any(axis=1)


def _settled(jobs: Sequence[WindowJob], group: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G,) count and predicted-quality sum of each batch's jobs that earlier ticks dispatched.

    A batch's alpha is a mean over all its jobs: without them, a job deferred to lift one tick's
    mean would, once its batch-mates had run, wait alone for headroom it can never get. A batch
    whose dispatched jobs are below its alpha now (its promise margin rose since) counts none, so
    the jobs left are held to alpha on their own, not made to make up the difference."""
    count = np.zeros(alpha.size, dtype=np.int64)
    total = np.zeros(alpha.size)
    for i in np.unique(group, return_index=True)[1].tolist():
        g, job = int(group[i]), jobs[i]
        if np.isnan(alpha[g]) or job.batch_settled_jobs <= 0:
            continue
        p_sum = min(max(job.batch_settled_p_sum, 0.0), float(job.batch_settled_jobs))
        if p_sum >= job.batch_settled_jobs * alpha[g]:
            count[g], total[g] = job.batch_settled_jobs, p_sum
    return count, total


class _Reasons:
    """The text of each assignment's reason; the per-(job, model) numbers are read once as Python
    lists, since formatting 10k reasons from NumPy scalars costs more than the solve."""

    def __init__(self, est: WindowEstimates, eligibility: Eligibility, fleet: Fleet, pinned: np.ndarray,
                 promise_gap: float) -> None:
        self.names = fleet.names
        self.pinned = pinned.tolist()
        self.promise_gap = promise_gap
        self.p = est.p_success.tolist()
        self.cost = est.cost_usd.tolist()
        self.latency = est.latency_s.tolist()
        self.eligible = eligibility.mask.tolist()
        self.late = eligibility.late.tolist()
        # The three cheapest models of each job: the chosen one plus two alternatives at most.
        self.by_cost = np.argsort(est.cost_usd, axis=1)[:, :3].tolist()

    def __call__(self, i: int, j: int, job: WindowJob) -> str:
        names, p, cost = self.names, self.p[i], self.cost[i]
        text = f"{names[j]} p={p[j]:.2f} est ${cost[j]:.6f} {self.latency[i][j]:.1f}s"
        alternatives = []
        for k in [k for k in self.by_cost[i] if k != j][:2]:
            if not self.eligible[i][k]:
                alternatives.append(f"{names[k]} not eligible")
            else:
                ratio = cost[k] / max(cost[j], 1e-12)
                alternatives.append(f"{names[k]} p={p[k]:.2f} {ratio:.1f}x cost")
        constraint = self.constraint(job)
        if self.pinned[i] == j:
            return (f"exploring: {names[j]} has too few outcome labels, so this job was chosen to try it "
                    f"(budgeted share of the window): {text}")
        late = "; WILL MISS DEADLINE: fastest eligible model" if self.late[i] else ""
        return f"cheapest plan meeting {constraint} within capacity: {text}" + (
            f" — {'; '.join(alternatives)}" if alternatives else "") + late

    def constraint(self, job: WindowJob) -> str:
        constraint = f"floor {job.min_quality:.2f}" if job.min_quality is not None else "no floor"
        if job.batch_alpha is not None:
            constraint += f", batch mean >= {job.batch_alpha:.2f}"
            if self.promise_gap > 0:
                constraint += f" (+{self.promise_gap:.2f} promise margin)"
        return constraint


def _budget_notes(jobs: Sequence[WindowJob]) -> list[str]:
    left = {j.batch_id: j.batch_budget_left_usd for j in jobs if j.batch_budget_left_usd is not None}
    return [f"batch {batch_id} has ${budget:.6f} of its max_cost_usd left" for batch_id, budget in left.items()]
