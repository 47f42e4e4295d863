"""The optimizer on hand-built windows whose optimum, relaxations and alpha are known."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scheduler.errors import InvalidRequest
from scheduler.optimizer import SOLVERS, AssignmentProblem, SolveStatus, solve, validate_problem
from scheduler.optimizer.plan_check import violations

INF = np.inf
METHODS = ["fast", "exact-highs", "exact-cbc", "exact-highspy"]


def _problem(cost, p, capacity, *, eligible=None, group=None, alpha=(np.nan,), penalty=None):
    cost = np.asarray(cost, dtype=float)
    n, _ = cost.shape
    return AssignmentProblem(
        cost_usd=cost,
        p_success=np.asarray(p, dtype=float),
        capacity=np.asarray(capacity, dtype=np.int64),
        eligible=np.ones(cost.shape, bool) if eligible is None else np.asarray(eligible, bool),
        group=np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64),
        alpha=np.asarray(alpha, dtype=float),
        deferral_penalty_usd=np.full(n, 10.0) if penalty is None else np.asarray(penalty, float),
    )


@pytest.mark.parametrize("method", METHODS)
def test_capacity_sends_the_job_that_gains_least_to_the_dear_model(method):
    # Cheap model holds 2 of 3 jobs; moving job 2 costs 1.0 extra, job 0 or 1 costs 2.0 or 3.0.
    prob = _problem([[1, 3], [1, 4], [1, 2]], np.full((3, 2), 0.9), [2, 3])
    sol = solve(prob, method)
    assert sol.model_index.tolist() == [0, 0, 1]
    assert sol.objective_usd == pytest.approx(4.0)
    assert sol.status is SolveStatus.OPTIMAL
    assert sol.lower_bound_usd <= sol.objective_usd + 1e-9


@pytest.mark.parametrize("method", METHODS)
def test_quality_row_buys_the_cheapest_upgrade(method):
    # alpha 0.7 over two jobs: one must go to the accurate model; job 1's upgrade is cheaper.
    prob = _problem([[1, 5], [1, 2]], [[0.5, 0.9], [0.5, 0.9]], [2, 2], alpha=[0.7])
    sol = solve(prob, method)
    assert sol.model_index.tolist() == [0, 1]
    assert sol.objective_usd == pytest.approx(3.0)
    assert sol.status is SolveStatus.OPTIMAL


@pytest.mark.parametrize("method", METHODS)
def test_deferring_a_hopeless_job_beats_paying_for_quality(method):
    # Job 1 drags the mean down on every model; deferring it (penalty 0.5) is cheapest, and the
    # mean of what is scheduled (job 0 alone) meets alpha.
    prob = _problem([[1, 4], [1, 4]], [[0.9, 0.95], [0.1, 0.3]], [2, 2], alpha=[0.8],
                    penalty=[10.0, 0.5])
    sol = solve(prob, method)
    assert sol.model_index.tolist() == [0, -1]
    assert sol.objective_usd == pytest.approx(1.5)
    assert sol.relaxations == ()


@pytest.mark.parametrize("method", METHODS)
def test_must_assign_job_without_an_eligible_model_is_deferred_and_said(method):
    prob = _problem([[1, 2], [1, 2]], np.full((2, 2), 0.9), [2, 2],
                    eligible=[[True, True], [False, False]], penalty=[INF, INF])
    sol = solve(prob, method)
    assert sol.model_index.tolist() == [0, -1]
    assert sol.status is SolveStatus.RELAXED
    assert len(sol.relaxations) == 1 and "no eligible model" in sol.relaxations[0]
    assert np.isfinite(sol.objective_usd)


@pytest.mark.parametrize("method", METHODS)
def test_capacity_short_for_must_assign_jobs_defers_only_the_excess(method):
    prob = _problem(np.ones((5, 2)), np.full((5, 2), 0.9), [2, 1], penalty=[INF] * 5)
    sol = solve(prob, method)
    assert (sol.model_index >= 0).sum() == 3
    assert sol.status is SolveStatus.RELAXED
    assert any("capacity short: 2 of 5" in r for r in sol.relaxations)


@pytest.mark.parametrize("method", METHODS)
def test_unreachable_alpha_is_lowered_to_the_best_reachable_mean(method):
    # Must-assign job 0 tops out at 0.5; three optional jobs reach 0.75 on model 0. Best mean with
    # job 0 placed: take all three optional ones, (0.5 + 3 * 0.75) / 4 = 0.6875.
    p = [[0.5, 0.1], [0.75, 0.2], [0.75, 0.2], [0.75, 0.2]]
    prob = _problem(np.ones((4, 2)), p, [10, 10], alpha=[0.8], penalty=[INF, 5, 5, 5])
    sol = solve(prob, method)
    assert sol.status is SolveStatus.RELAXED
    assert sol.group_alpha_used[0] == pytest.approx(0.6875)
    assert "alpha 0.8000 lowered to 0.6875" in sol.relaxations[0]
    assert sol.model_index.tolist() == [0, 0, 0, 0]
    assert violations(prob, sol.model_index, sol.group_alpha_used) == []


def test_all_methods_agree_on_relaxations_and_objective():
    rng = np.random.default_rng(7)
    n, m = 12, 3
    prob = _problem(rng.uniform(0.1, 1, (n, m)), rng.uniform(0, 0.6, (n, m)), [3, 3, 2],
                    group=rng.integers(0, 2, n), alpha=[0.9, 0.55], penalty=[INF] * n)
    sols = {method: solve(prob, method) for method in METHODS}
    ref = sols["exact-highspy"]
    assert ref.status is SolveStatus.RELAXED
    for sol in sols.values():
        assert sol.relaxations == ref.relaxations
        np.testing.assert_array_equal(sol.group_alpha_used, ref.group_alpha_used)
    for name in ("exact-highs", "exact-cbc"):
        assert sols[name].objective_usd == pytest.approx(ref.objective_usd, rel=2e-4)


def test_exact_accepts_a_backend_and_the_registry_names_every_method():
    prob = _problem([[1, 3], [1, 4], [1, 2]], np.full((3, 2), 0.9), [2, 3])
    assert solve(prob, "exact", backend="cbc").solver == "exact-cbc"
    assert solve(prob, "exact", backend="highs").solver == "exact-highs"
    assert set(METHODS) <= set(SOLVERS)
    with pytest.raises(InvalidRequest):
        solve(prob, "exact", backend="gurobi")
    with pytest.raises(InvalidRequest):
        solve(prob, "annealing")


def test_empty_window_and_empty_fleet():
    empty = _problem(np.zeros((0, 2)), np.zeros((0, 2)), [1, 1], penalty=[])
    assert solve(empty).model_index.size == 0
    no_models = _problem(np.zeros((2, 0)), np.zeros((2, 0)), [], penalty=[1.0, INF])
    sol = solve(no_models, "exact")
    assert sol.model_index.tolist() == [-1, -1]
    assert sol.status is SolveStatus.RELAXED and sol.objective_usd == pytest.approx(1.0)


GOOD = _problem([[1, 3], [1, 4]], np.full((2, 2), 0.9), [2, 3], alpha=[0.5])


@pytest.mark.parametrize(
    "change",
    [
        {"cost_usd": np.array([[1.0, np.nan], [1, 4]])},
        {"cost_usd": np.ones(2)},
        {"p_success": np.array([[0.5, 1.5], [0.5, 0.5]])},
        {"p_success": np.full((2, 2), np.nan)},
        {"p_success": np.ones((2, 3))},
        {"capacity": np.array([2, -1])},
        {"capacity": np.array([2.0, 1.0])},
        {"eligible": np.ones((2, 2), dtype=int)},
        {"group": np.array([0, 1])},
        {"alpha": np.array([1.5])},
        {"deferral_penalty_usd": np.array([1.0, -1.0])},
        {"deferral_penalty_usd": np.array([1.0, np.nan])},
        {"deferral_penalty_usd": np.ones(3)},
        {"capacity_row": np.array([0, 2])},                                    # no row 2
        {"capacity_row": np.array([0.0, 1.0])},
        {"capacity": np.array([1, 1, 1])},                                     # without capacity_row
        {"settled_jobs": np.array([2])},                                       # without its sum
        {"settled_jobs": np.array([2, 1]), "settled_p_sum": np.array([1.0, 1.0])},
        {"settled_jobs": np.array([-1]), "settled_p_sum": np.array([0.0])},
        {"settled_jobs": np.array([1]), "settled_p_sum": np.array([1.5])},    # a mean above 1
        {"alpha": np.array([0.6]), "settled_jobs": np.array([2]), "settled_p_sum": np.array([1.0])},
    ],
)
def test_validate_rejects_malformed_problems(change):
    validate_problem(GOOD)
    bad = replace(GOOD, **change)
    with pytest.raises(InvalidRequest):
        validate_problem(bad)
    with pytest.raises(InvalidRequest):
        solve(bad)


@pytest.mark.parametrize("method", METHODS)
def test_scarce_slots_go_to_the_jobs_that_waited_longest(method):
    # Two slots, five jobs: penalties (minutes waited) dwarf the costs, so the two oldest jobs run,
    # each on the model that is cheaper for it, whatever the cost differences.
    cost = [[1e-5, 2e-5], [3e-6, 1e-6], [1e-5, 1e-5], [2e-6, 9e-6], [5e-6, 1e-6]]
    prob = _problem(cost, np.full((5, 2), 0.9), [1, 1], penalty=[31.0, 601.0, 12.0, 455.0, 3.0])
    sol = solve(prob, method)
    assert sol.model_index.tolist() == [-1, 1, -1, 0, -1]
    assert sol.objective_usd == pytest.approx(31.0 + 12.0 + 3.0 + 1e-6 + 2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_a_groups_settled_jobs_count_in_its_mean(method):
    # One job, p 0.3 on the only model, alpha 0.5: alone it breaks the row and is deferred; with
    # two settled jobs of p 0.7 the group's mean is (1.4 + 0.3) / 3 = 0.567 and it runs; with one
    # it would be (0.7 + 0.3) / 2 = 0.5, exactly alpha, and it runs too.
    alone = _problem([[1.0]], [[0.3]], [1], alpha=(0.5,))
    assert solve(alone, method).model_index.tolist() == [-1]
    for count, total in ((2, 1.4), (1, 0.7)):
        lifted = replace(alone, settled_jobs=np.array([count]), settled_p_sum=np.array([total]))
        sol = solve(lifted, method)
        assert sol.model_index.tolist() == [0] and sol.status is SolveStatus.OPTIMAL
    short = replace(alone, settled_jobs=np.array([1]), settled_p_sum=np.array([0.6]))
    assert solve(short, method).model_index.tolist() == [-1]      # (0.6 + 0.3) / 2 < 0.5


@pytest.mark.parametrize("method", METHODS)
def test_columns_sharing_a_capacity_row_share_its_slots(method):
    # Columns: A (p 0.3, $1), B (p 0.9, $10, no slot free), and "A, then B if weak" (p 0.8, $3),
    # which takes a slot of A now. Two jobs, alpha 0.5, one slot on A. Were the cascade's slot its
    # own, both jobs would run (A and the cascade: mean 0.55, $4); shared, one runs, on the cascade.
    one_slot = replace(_problem([[1, 10, 3]] * 2, [[0.3, 0.9, 0.8]] * 2, [1, 0], alpha=(0.5,),
                                penalty=[100.0, 100.0]), capacity_row=np.array([0, 1, 0]))
    sol = solve(one_slot, method)
    assert sorted(sol.model_index.tolist()) == [-1, 2]
    assert sol.objective_usd == pytest.approx(103.0)
    own_slot = replace(one_slot, capacity=np.array([1, 0, 1]), capacity_row=None)
    assert sorted(solve(own_slot, method).model_index.tolist()) == [0, 2]
