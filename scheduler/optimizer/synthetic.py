"""Random assignment problems with the structure of a real window, for tests and benchmarks.

synthetic_problem, ample capacity: costs span about two orders of magnitude across models (a CPU
model at ~1/100 of the largest GPU or API model) and scale with each job's token count; the
predicted success rises with the model's price and falls with the job's difficulty, so quality is
bought with cost. The cheap models' free capacity is below the window size, and each group's alpha
sits between the mean success of the cheapest plan and the best reachable one, so capacity and
quality rows both bind.

scarce_problem: a busy scheduler's window, far more jobs than free slots (see its docstring).

with_cascade_columns: either window plus two-model cascade columns that share their first
model's capacity row, as the policy builds them (scheduler/cascade_columns.py).
"""
from __future__ import annotations

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem


def synthetic_problem(
    num_jobs: int,
    num_models: int,
    *,
    num_groups: int = 4,
    seed: int = 0,
    eligible_fraction: float = 0.9,
    must_assign_fraction: float = 0.1,
    quality_tightness: float = 0.3,
    capacity_slack: float = 1.2,
) -> AssignmentProblem:
    """A feasible, binding instance; ``quality_tightness`` in [0, 1] moves alpha from the cheapest
    plan's mean success (0) to the best reachable mean (1)."""
    rng = np.random.default_rng(seed)
    n, m = num_jobs, num_models
    price_per_ktok = np.logspace(-2, 0, m) * 1e-3
    strength = np.linspace(-1.0, 2.0, m) + rng.normal(0.0, 0.1, m)
    tokens_k = rng.lognormal(0.0, 0.6, n)
    cost = tokens_k[:, None] * price_per_ktok[None, :] * rng.lognormal(0.0, 0.15, (n, m))
    difficulty = rng.normal(0.5, 1.0, n)
    logit = 1.7 * (strength[None, :] - difficulty[:, None]) + rng.normal(0.0, 0.4, (n, m))
    p = 1.0 / (1.0 + np.exp(-logit))

    eligible = rng.random((n, m)) < eligible_fraction
    eligible[:, -1] |= ~eligible.any(axis=1)  # the largest model can take any job

    # Cheap models get less than an even share, the largest ones the rest (with slack), so the
    # cheapest plan overflows and the total still covers the window.
    share = np.linspace(0.5, 1.5, m)
    capacity = np.floor(capacity_slack * n * share / share.sum()).astype(np.int64)

    group = rng.integers(0, num_groups, n)
    # "low" is the plan that fills models cheapest first up to capacity (what a capacity-only
    # optimum looks like here), "high" every job on its best model; alpha sits between them.
    fill = np.repeat(np.arange(m), capacity)[: n]
    fill = np.concatenate([fill, np.full(n - fill.size, m - 1)])
    cheap_plan = rng.permutation(fill)
    best = np.where(eligible, p, -np.inf).argmax(axis=1)
    rows = np.arange(n)
    alpha = np.empty(num_groups)
    for g in range(num_groups):
        in_g = group == g
        low = p[rows[in_g], cheap_plan[in_g]].mean() if in_g.any() else 0.5
        high = p[rows[in_g], best[in_g]].mean() if in_g.any() else 0.5
        alpha[g] = low + quality_tightness * (high - low)

    # Deferral costs a few times the job's dearest option: dear enough that the optimizer schedules
    # most jobs, cheap enough that it may leave a hopeless one for later.
    penalty = cost.max(axis=1) * rng.uniform(1.5, 4.0, n)
    penalty[rng.random(n) < must_assign_fraction] = np.inf
    return AssignmentProblem(
        cost_usd=cost,
        p_success=p,
        capacity=capacity,
        eligible=eligible,
        group=group,
        alpha=alpha,
        deferral_penalty_usd=penalty,
    )


def scarce_problem(
    num_jobs: int,
    num_models: int,
    total_capacity: int,
    *,
    num_batches: int = 5,
    batch_fraction: float = 0.25,
    deadline_fraction: float = 0.1,
    seed: int = 0,
) -> AssignmentProblem:
    """A window of a busy scheduler: far more jobs than free slots, deferral the usual outcome.

    Deferral penalties of the scheduler's kind (its penalty grows with the minutes a job has
    waited): 1 USD x (1 + age in minutes), ages uniform over 0-600 minutes, and for
    ``deadline_fraction`` of the jobs up to 11x more as their deadline nears. Costs are token prices, ~1e-6..1e-2 USD per job, so the penalties sit 4-8 orders of
    magnitude above them. ``total_capacity`` slots are spread unevenly over the models (the
    cheap ones get fewer). ``num_batches`` batches, ``batch_fraction`` of the window together,
    each carry a mean-quality target alpha in 0.5-0.8; every other job is in group 0, which has none.
    """
    rng = np.random.default_rng(seed)
    n, m = num_jobs, num_models
    price_per_ktok = np.logspace(-5, -2.3, m)
    strength = np.linspace(-1.0, 2.0, m) + rng.normal(0.0, 0.1, m)
    tokens_k = rng.lognormal(0.0, 0.8, n)
    cost = tokens_k[:, None] * price_per_ktok[None, :] * rng.lognormal(0.0, 0.15, (n, m))
    difficulty = rng.normal(0.5, 1.0, n)
    logit = 1.7 * (strength[None, :] - difficulty[:, None]) + rng.normal(0.0, 0.4, (n, m))
    p = 1.0 / (1.0 + np.exp(-logit))
    eligible = rng.random((n, m)) < 0.9
    eligible[:, -1] |= ~eligible.any(axis=1)

    share = rng.uniform(0.5, 1.5, m) * np.linspace(0.6, 1.4, m)
    capacity = np.floor(total_capacity * share / share.sum()).astype(np.int64)
    capacity[np.argsort(-share)[: total_capacity - int(capacity.sum())]] += 1

    group = np.where(rng.random(n) < batch_fraction, rng.integers(1, num_batches + 1, n), 0)
    alpha = np.concatenate([[np.nan], np.linspace(0.5, 0.8, num_batches)])

    age_min = rng.uniform(0.0, 600.0, n)
    urgency = np.where(rng.random(n) < deadline_fraction, rng.uniform(0.0, 1.0, n), 0.0)
    penalty = 1.0 * (1.0 + age_min) * (1.0 + 10.0 * urgency)
    return AssignmentProblem(
        cost_usd=cost,
        p_success=p,
        capacity=capacity,
        eligible=eligible,
        group=group.astype(np.int64),
        alpha=alpha,
        deferral_penalty_usd=penalty,
    )


def with_cascade_columns(problem: AssignmentProblem, *, seed: int = 0) -> AssignmentProblem:
    """``problem`` plus a column per pair (cheaper model j, dearer model k) of its models: run j,
    escalate to k with a chance of 20-60% per job; expected cost c_j + P(escalate) c_k, expected
    quality between p_j and max(p_j, p_k). Each draws on j's capacity row."""
    if problem.capacity_row is not None:
        raise ValueError("with_cascade_columns expects one capacity row per model")
    rng = np.random.default_rng(seed)
    n, m = problem.num_jobs, problem.num_models
    order = np.argsort(np.median(problem.cost_usd, axis=0))
    pairs = [(int(order[a]), int(order[b])) for a in range(m) for b in range(a + 1, m)]
    first = np.array([j for j, _ in pairs], dtype=np.int64)
    then = np.array([k for _, k in pairs], dtype=np.int64)
    escalate = rng.uniform(0.2, 0.6, (n, len(pairs)))
    cost = problem.cost_usd[:, first] + escalate * problem.cost_usd[:, then]
    lift = rng.uniform(0.5, 0.9, (n, len(pairs)))
    p_first = problem.p_success[:, first]
    p = p_first + lift * np.maximum(problem.p_success[:, then] - p_first, 0.0)
    eligible = problem.eligible[:, first] & problem.eligible[:, then]
    return AssignmentProblem(
        cost_usd=np.hstack([problem.cost_usd, cost]),
        p_success=np.hstack([problem.p_success, p]),
        capacity=problem.capacity,
        eligible=np.hstack([problem.eligible, eligible]),
        group=problem.group,
        alpha=problem.alpha,
        deferral_penalty_usd=problem.deferral_penalty_usd,
        settled_jobs=problem.settled_jobs,
        settled_p_sum=problem.settled_p_sum,
        capacity_row=np.concatenate([np.arange(m), first]),
    )
