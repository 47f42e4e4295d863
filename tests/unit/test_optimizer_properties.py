"""Property tests: every plan feasible, every bound valid, solvers against a brute-force oracle."""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.optimizer import AssignmentProblem, SolveStatus, fast, lp_core, prices, repair, solve
from scheduler.optimizer.highs_model import cost_scale, quality_coeff, solve_subset
from scheduler.optimizer.plan_check import FEASIBILITY_TOL, objective_usd, violations
from scheduler.optimizer.problem import settled_surplus
from scheduler.optimizer.relax import relax
from scheduler.optimizer.synthetic import scarce_problem, synthetic_problem, with_cascade_columns

TOL = 1e-7
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def windows(draw, max_jobs: int, max_models: int, max_groups: int = 3, min_jobs: int = 1
            ) -> AssignmentProblem:
    """Small windows of every shape: tight or loose capacity, holes in eligibility, must-assign
    jobs, groups without a target; many of them infeasible as stated."""
    n = draw(st.integers(min_jobs, max_jobs))
    m = draw(st.integers(1, max_models))
    num_groups = draw(st.integers(1, max_groups))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    must_fraction = draw(st.sampled_from([0.0, 0.3, 1.0]))
    eligible_fraction = draw(st.sampled_from([0.5, 0.8, 1.0]))
    capacity_row = None
    num_rows = m
    if m > 1 and draw(st.booleans()):
        # Columns sharing capacity rows, as a cascade shares its first model's slots.
        num_rows = int(rng.integers(1, m))
        capacity_row = rng.integers(0, num_rows, m)
    capacity = rng.integers(0, n + 1, num_rows) if draw(st.booleans()) else np.full(num_rows, n)
    alpha = np.where(rng.random(num_groups) < 0.25, np.nan, rng.uniform(0.2, 0.9, num_groups))
    penalty = rng.uniform(0.05, 2.0, n).round(3)
    penalty[rng.random(n) < must_fraction] = np.inf
    alpha = alpha.round(2)
    settled_jobs = settled_p_sum = None
    if draw(st.booleans()):
        # Jobs of the groups that earlier ticks dispatched, at a mean at or above alpha.
        settled_jobs = rng.integers(0, 4, num_groups)
        mean = np.minimum(np.nan_to_num(alpha, nan=0.0) + rng.uniform(0.0, 0.2, num_groups), 1.0)
        settled_p_sum = (settled_jobs * mean).round(3)
        settled_p_sum = np.maximum(settled_p_sum, np.ceil(settled_jobs * np.nan_to_num(alpha) * 1e3) / 1e3)
    return AssignmentProblem(
        cost_usd=rng.uniform(0.01, 1.0, (n, m)).round(3),
        p_success=rng.uniform(0.0, 1.0, (n, m)).round(3),
        capacity=capacity.astype(np.int64),
        eligible=rng.random((n, m)) < eligible_fraction,
        group=rng.integers(0, num_groups, n),
        alpha=alpha,
        deferral_penalty_usd=penalty,
        settled_jobs=settled_jobs,
        settled_p_sum=settled_p_sum,
        capacity_row=capacity_row,
    )


def _check_solution(problem: AssignmentProblem, sol) -> None:
    relaxed = relax(problem)
    plan = sol.model_index
    assert "witness plan" not in sol.solver  # solve()'s safety net must not be what saved it
    assert violations(relaxed.problem, plan) == []
    np.testing.assert_array_equal(sol.group_alpha_used, relaxed.alpha_used)
    target = ~np.isnan(problem.alpha)
    assert (sol.group_alpha_used[target] <= problem.alpha[target]).all()
    # Against the problem as stated, the only breaks allowed are the relaxed ones.
    for broken in violations(problem, plan, sol.group_alpha_used):
        assert "must-assign" in broken and sol.status is SolveStatus.RELAXED
    assert (sol.status is SolveStatus.RELAXED) == bool(sol.relaxations)
    assert sol.objective_usd == pytest.approx(objective_usd(relaxed.problem, plan), abs=1e-9)
    assert sol.lower_bound_usd <= sol.objective_usd + TOL


@settings(SETTINGS, max_examples=60)
@given(windows(max_jobs=30, max_models=4))
def test_plans_are_feasible_and_bounds_hold_across_solvers(problem):
    fast = solve(problem, "fast")
    exact = solve(problem, "exact-highspy", time_limit_s=20)
    for sol in (fast, exact):
        _check_solution(problem, sol)
    assert fast.relaxations == exact.relaxations
    slack = TOL * max(1.0, abs(exact.objective_usd))
    assert exact.objective_usd >= fast.lower_bound_usd - slack
    assert fast.objective_usd >= exact.lower_bound_usd - slack
    if exact.status is not SolveStatus.FEASIBLE:
        assert exact.objective_usd <= fast.objective_usd * (1 + 1e-4) + slack


def _brute_force(problem: AssignmentProblem) -> tuple[float, float | None]:
    """(optimum, best reachable mean of group 0 with no quality row) over every plan."""
    n, m = problem.num_jobs, problem.num_models
    plans = np.array(list(itertools.product(range(-1, m), repeat=n)))
    rows = np.arange(n)
    on = plans >= 0
    k = np.where(on, plans, 0)
    ok = (on & problem.eligible[rows, k]) | (~on & np.isfinite(problem.deferral_penalty_usd))
    ok = ok.all(axis=1)
    for r, slots in enumerate(problem.capacity):
        ok &= np.isin(plans, np.flatnonzero(problem.rows == r)).sum(axis=1) <= slots
    p = np.where(on, problem.p_success[rows, k], 0.0)
    settled_count = 0 if problem.settled_jobs is None else problem.settled_jobs[0]
    settled_sum = 0.0 if problem.settled_p_sum is None else problem.settled_p_sum[0]
    best_mean = None
    if ok.any() and problem.alpha.size == 1:
        count = on.sum(axis=1) + settled_count
        with np.errstate(invalid="ignore", divide="ignore"):
            best_mean = float(np.where(ok & (count > 0), (p.sum(axis=1) + settled_sum) / count, -1).max())
    settled = settled_surplus(problem)
    for g in np.flatnonzero(~np.isnan(problem.alpha)):
        in_g = problem.group == g
        ok &= ((p - problem.alpha[g]) * (on & in_g)).sum(axis=1) + settled[g] >= -FEASIBILITY_TOL
    cost = np.where(on, problem.cost_usd[rows, k], problem.deferral_penalty_usd)
    return float(np.where(ok, cost.sum(axis=1), np.inf).min()), best_mean


@settings(SETTINGS, max_examples=80)
@given(windows(max_jobs=6, max_models=2, max_groups=2))
def test_solvers_meet_the_brute_force_optimum(problem):
    relaxed = relax(problem)
    optimum, _ = _brute_force(relaxed.problem)
    assert np.isfinite(optimum)  # the relaxed problem is always feasible
    slack = 1e-4 * abs(optimum) + 1e-9
    for method in ("exact-highspy", "exact-highs"):
        sol = solve(problem, method)
        assert sol.objective_usd == pytest.approx(optimum, rel=1e-4, abs=1e-9)
        assert sol.lower_bound_usd <= optimum + slack
    fast = solve(problem, "fast")
    assert fast.objective_usd >= optimum - slack
    assert fast.lower_bound_usd <= optimum + slack
    lowered = relaxed.alpha_used < problem.alpha
    if problem.alpha.size == 1 and lowered.any():
        # With one group the lowered alpha is exactly the best reachable mean.
        _, reachable = _brute_force(replace(relaxed.problem, alpha=np.array([np.nan])))
        assert relaxed.alpha_used[0] == pytest.approx(reachable, abs=1e-8)


@settings(SETTINGS, max_examples=15)
@given(windows(max_jobs=12, max_models=3, max_groups=2))
def test_cbc_and_highs_agree(problem):
    cbc = solve(problem, "exact", backend="cbc", time_limit_s=20)
    highs = solve(problem, "exact", backend="highs", time_limit_s=20)
    _check_solution(problem, cbc)
    assert cbc.objective_usd == pytest.approx(highs.objective_usd, rel=2e-4, abs=1e-9)
    assert cbc.relaxations == highs.relaxations


def test_cbc_finds_the_optimum_where_its_preprocessing_did_not():
    """A window hypothesis found: with its integer preprocessing on, CBC returned 5.732 and called
    it optimal; HiGHS (and the fast path) find 4.946."""
    cost = np.array([[0.19, 0.348], [0.473, 0.232], [0.943, 0.875], [0.673, 0.15], [0.049, 0.143],
                     [0.35, 0.727], [0.347, 0.394], [0.256, 0.144], [0.395, 0.043], [0.623, 0.999],
                     [0.19, 0.034], [0.467, 0.732]])
    p = np.array([[0.397, 0.83], [0.202, 0.546], [0.922, 0.537], [0.077, 0.622], [0.333, 0.104],
                  [0.654, 0.346], [0.144, 0.077], [0.259, 0.548], [0.723, 0.013], [0.464, 0.234],
                  [0.953, 0.137], [0.702, 0.031]])
    penalty = np.array([0.797, 1.272, 0.463, 1.592, 0.355, 0.063, 0.713, 0.122, 0.571, 0.063, 0.72, 0.156])
    problem = AssignmentProblem(cost_usd=cost, p_success=p, capacity=np.array([12, 12]),
                                eligible=np.ones((12, 2), dtype=bool), group=np.zeros(12, dtype=np.int64),
                                alpha=np.array([0.83]), deferral_penalty_usd=penalty)
    for backend in ("cbc", "highs"):
        assert solve(problem, "exact", backend=backend).objective_usd == pytest.approx(4.946)


@pytest.mark.parametrize("seed", range(6))
def test_fast_is_close_to_exact_on_synthetic_windows(seed):
    # The gap fast.py states for small windows: at most a few %, typically well under 1%.
    problem = synthetic_problem(80, 3, num_groups=2, seed=seed)
    fast = solve(problem, "fast")
    exact = solve(problem, "exact-highspy", time_limit_s=30)
    assert exact.status is SolveStatus.OPTIMAL
    assert fast.objective_usd <= exact.objective_usd * 1.03
    assert fast.lower_bound_usd <= exact.objective_usd * (1 + 1e-9)


def test_the_core_lp_takes_no_quality_slack_where_the_window_is_feasible():
    """A relaxed window hypothesis found (943 jobs, 4 models, tiny p - alpha gaps): with the slack
    priced at 1e4 x the dearest cost, the LP preferred 2.8e-5 of quality slack to the feasible
    plan $0.80 dearer."""
    data = np.load(Path(__file__).resolve().parents[1] / "data" / "lp_slack_window.npz")
    problem = AssignmentProblem(cost_usd=data["cost_usd"], p_success=data["p_success"], capacity=data["capacity"],
                                eligible=data["eligible"], group=data["group"], alpha=data["alpha"],
                                deferral_penalty_usd=data["deferral_penalty_usd"])
    coeff, scale = data["coeff"], float(data["scale"])
    core = lp_core.solve_lp(problem, coeff, scale)
    full = solve_subset(problem, np.arange(problem.num_jobs), np.full(problem.num_jobs, -1), coeff=coeff, scale=scale)
    assert full.slack == 0.0
    assert core.slack <= 1e-9
    assert core.value == pytest.approx(full.objective, rel=1e-6)


@settings(SETTINGS, max_examples=8)
@given(windows(min_jobs=600, max_jobs=1500, max_models=5))
def test_core_lp_equals_the_full_lp_on_adversarial_windows(problem):
    # Above lp_core.BASE_JOBS the prices, the core and column generation all take part.
    relaxed = relax(problem).problem
    coeff, scale = quality_coeff(relaxed), cost_scale(relaxed)
    core = lp_core.solve_lp(relaxed, coeff, scale)
    full = solve_subset(relaxed, np.arange(relaxed.num_jobs), np.full(relaxed.num_jobs, -1),
                        coeff=coeff, scale=scale)
    assert core.slack <= 1e-9
    assert core.value == pytest.approx(full.objective, rel=1e-6, abs=1e-9)
    assert core.bound <= full.objective * (1 + 1e-9) + 1e-12
    _check_solution(problem, solve(problem, "fast"))


def test_core_lp_equals_the_full_lp():
    problem = synthetic_problem(2000, 6, seed=3)
    coeff, scale = quality_coeff(problem), cost_scale(problem)
    core = lp_core.solve_lp(problem, coeff, scale)
    full = solve_subset(problem, np.arange(problem.num_jobs), np.full(problem.num_jobs, -1),
                        coeff=coeff, scale=scale)
    assert core.core.size < problem.num_jobs / 2  # the point of the core: most jobs stay fixed
    assert core.value == pytest.approx(full.objective, rel=1e-7)
    assert core.bound == pytest.approx(full.objective, rel=1e-6)
    assert core.bound <= core.value + 1e-12


def test_column_generation_recovers_from_poor_prices(monkeypatch):
    # With zero prices the first core is the wrong set of jobs; pricing must pull in every job
    # whose fixed option stops being its cheapest until the core LP is the full LP.
    problem = synthetic_problem(2000, 6, seed=4)
    coeff, scale = quality_coeff(problem), cost_scale(problem)
    monkeypatch.setattr(lp_core, "smooth_prices",
                        lambda p, *a, **k: np.zeros(p.num_models + p.alpha.size))
    core = lp_core.solve_lp(problem, coeff, scale)
    full = solve_subset(problem, np.arange(problem.num_jobs), np.full(problem.num_jobs, -1),
                        coeff=coeff, scale=scale)
    assert core.rounds > 1
    assert core.value == pytest.approx(full.objective, rel=1e-7)
    assert core.bound <= full.objective * (1 + 1e-9)


def test_fast_rounds_with_a_milp_when_the_repair_gives_up(monkeypatch):
    monkeypatch.setattr(fast, "repair", lambda *a: None)
    problem = synthetic_problem(60, 3, seed=5)
    sol = solve(problem, "fast", time_limit_s=5)
    assert sol.solver == "fast-lagrangian (neighbourhood)"
    _check_solution(problem, sol)
    # 60 jobs < MIN_NEIGHBOURHOOD: the rounding MILP covers the whole window.
    exact = solve(problem, "exact-highspy", time_limit_s=20)
    assert sol.objective_usd <= exact.objective_usd * (1 + 1e-3)


def test_fast_certifies_half_a_percent_on_a_10k_window():
    problem = synthetic_problem(10_000, 8, seed=2)
    sol = solve(problem, "fast")
    assert violations(problem, sol.model_index, sol.group_alpha_used) == []
    assert sol.gap <= 0.005
    assert sol.status is SolveStatus.FEASIBLE or sol.status is SolveStatus.OPTIMAL


# --- Scarce capacity: far more jobs than slots, penalties 4-8 orders of magnitude above costs ---


def _scheduled(sol) -> np.ndarray:
    return np.flatnonzero(sol.model_index >= 0)


@pytest.mark.parametrize(("slots", "seed"), [(100, 0), (128, 1), (1000, 2)])
def test_scarce_windows_are_feasible_and_match_exact(slots, seed):
    problem = scarce_problem(2000, 8, slots, seed=seed)
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    load = np.bincount(sol.model_index[_scheduled(sol)], minlength=8)
    assert (load <= problem.capacity).all()
    assert _scheduled(sol).size == slots     # every slot is worth a deferral penalty
    exact = solve(problem, "exact-highspy", time_limit_s=60)
    assert exact.status is SolveStatus.OPTIMAL
    # Within a cent of the exact MILP on windows whose objective is ~10^5-10^6 USD of penalties.
    assert sol.objective_usd <= exact.objective_usd + 0.01
    assert sol.lower_bound_usd <= exact.objective_usd + 1e-6


@pytest.mark.parametrize(("num_jobs", "slots", "seed"), [(600, 100, 0), (2000, 128, 1), (3000, 1000, 2)])
def test_scarce_windows_with_cascades_share_their_first_models_slots(num_jobs, slots, seed):
    # Cascade columns draw on their first model's row: the slots are shared, never offered twice.
    problem = with_cascade_columns(scarce_problem(num_jobs, 4, slots, seed=seed), seed=seed)
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    assert (problem.load(sol.model_index) <= problem.capacity).all()
    assert _scheduled(sol).size == slots
    exact = solve(problem, "exact-highspy", time_limit_s=60)
    assert exact.status is SolveStatus.OPTIMAL
    assert sol.objective_usd <= exact.objective_usd + 0.01
    assert sol.lower_bound_usd <= exact.objective_usd + 1e-6


def test_ample_windows_with_cascades_are_near_exact():
    problem = with_cascade_columns(synthetic_problem(3000, 4, seed=5), seed=5)
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    exact = solve(problem, "exact-highspy", time_limit_s=60)
    assert sol.objective_usd <= exact.objective_usd * (1 + 1e-3)


def test_scarce_slots_go_to_the_highest_penalties_when_costs_are_negligible():
    # No quality rows: the optimum schedules exactly the jobs with the largest penalties (the
    # oldest, or those whose deadline is near), and the LP bound is tight.
    problem = replace(scarce_problem(10_000, 8, 128, seed=3), alpha=np.full(6, np.nan),
                      eligible=np.ones((10_000, 8), dtype=bool))
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    top = np.sort(np.argsort(-problem.deferral_penalty_usd)[:128])
    np.testing.assert_array_equal(_scheduled(sol), top)
    assert sol.objective_usd - sol.lower_bound_usd <= 1e-3


def test_scarce_quality_rows_hold_and_the_gap_is_what_the_lp_leaves():
    problem = scarce_problem(10_000, 8, 128, seed=0)
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    # The objective is ~4M USD of deferred penalties; the plan is within a few cents of the LP.
    assert sol.objective_usd - sol.lower_bound_usd <= 0.05


def test_scarce_window_of_20k_jobs_and_100_slots_is_planned():
    problem = scarce_problem(20_000, 8, 100, seed=4)
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    assert _scheduled(sol).size == 100
    assert sol.solver == "fast-lagrangian"   # the repair did it, not a fallback MILP
    # Among the jobs without a quality target, none left waiting beats one scheduled by more
    # than the cost spread (penalties are dollars apart, costs at most ~0.05 USD).
    free = problem.group == 0
    on, off = sol.model_index >= 0, sol.model_index < 0
    assert problem.deferral_penalty_usd[free & off].max() <= (
        problem.deferral_penalty_usd[free & on].min() + problem.cost_usd.max())


def test_repair_of_a_plan_that_overfills_capacity_by_20k_jobs_stays_bounded():
    # Every job on its cheapest model, 100 slots: the repair must shed ~20k jobs. It used to
    # compare every moved job with every other (pool x pool matrices: ~3 GB each at this size);
    # its trades now look at a bounded pool, so this finishes and the plan is feasible.
    problem = scarce_problem(20_000, 8, 100, seed=5)
    coeff = quality_coeff(problem)
    plan = np.where(problem.eligible, problem.cost_usd, np.inf).argmin(axis=1)
    near = np.arange(300)
    fixed = repair.repair(problem, coeff, plan, np.zeros(problem.alpha.size), near)
    assert fixed is not None
    assert violations(problem, fixed) == []
    assert (fixed >= 0).sum() == 100


def test_scarce_must_assign_windows_defer_the_excess_and_stay_feasible():
    # The replay policy makes every job must-assign: relax defers what the slots cannot hold.
    base = scarce_problem(10_000, 8, 128, seed=6)
    problem = replace(base, deferral_penalty_usd=np.full(10_000, np.inf))
    sol = solve(problem, "fast")
    _check_solution(problem, sol)
    assert sol.status is SolveStatus.RELAXED
    assert _scheduled(sol).size == 128


@pytest.mark.parametrize("slots", [128, 1000])
def test_scarce_core_lp_is_the_full_lp_and_stays_small(slots):
    problem = scarce_problem(2000, 8, slots, seed=7)
    coeff, scale = quality_coeff(problem), cost_scale(problem)
    core = lp_core.solve_lp(problem, coeff, scale)
    full = solve_subset(problem, np.arange(problem.num_jobs), np.full(problem.num_jobs, -1),
                        coeff=coeff, scale=scale)
    assert core.slack <= 1e-9
    assert core.value == pytest.approx(full.objective, rel=1e-9)
    assert core.bound <= full.objective * (1 + 1e-9)
    # Capacity short, the core follows the slots, not the window.
    assert core.core.size <= 3 * max(slots, lp_core.MIN_CORE)


@pytest.mark.parametrize("slots", [100, 1000, 9_500, 12_000])
def test_smooth_prices_stay_within_the_penalties(slots):
    # No capacity price above the largest stake can be optimal (its row would be slack): the
    # prices must land at the deferral level, not run off (a live-set refit once drove them to
    # 1e9 USD on windows like these).
    problem = scarce_problem(5000, 8, slots, seed=8)
    coeff, scale = quality_coeff(problem), cost_scale(problem)
    y = prices.smooth_prices(problem, coeff, scale, problem.capacity.astype(float))
    assert np.isfinite(y).all()
    assert y[:8].max() <= problem.deferral_penalty_usd.max()
    assert prices.capacity_short(problem, problem.capacity.astype(float)) == (slots < 5000)


def test_nearest_ties_add_the_deferral_margin_when_capacity_is_short():
    # Reduced costs of 6 jobs, 2 models + deferral: jobs 0-2 have tiny model ties, jobs 3-5 sit
    # dollars from deferral, job 4 nearest.
    r = np.array([[1.0, 1.0 + 1e-6, 50.0], [2.0, 2.0 + 2e-6, 60.0], [3.0, 3.0 + 3e-6, 70.0],
                  [9.0, 30.0, 12.0], [9.0, 30.0, 9.5], [9.0, 30.0, 20.0]])
    assert lp_core.nearest_ties(r, 2, 0).tolist() == [0, 1]
    assert lp_core.nearest_ties(r, 2, 1).tolist() == [0, 1, 4]
