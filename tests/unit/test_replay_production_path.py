"""The replay's ``switchyard`` curve is the production policy's plan (issue 12, part 4).

``run_replay`` routes ours through ``OptimizingPolicy.plan`` on a simulated fleet
(scheduler/replay/simulated_fleet.py). These tests check that the fleet prices jobs exactly as the
replay's decision cost does, that the curve's points are scored from the real policy's plans (a
spy records what ``plan`` returned; it does not replace it), and that the production path decides
what a direct optimizer call on the same window decides (the replay's figures did not move).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scheduler.datasets import ModelPrice, Outcome, OutcomeMatrix, OutcomeRecord, Split, read_dataset
from scheduler.datasets.costing import realised_cost_usd
from scheduler.estimates import estimate_window
from scheduler.plan import Plan
from scheduler.policy import OptimizingPolicy
from scheduler.predictor import make_predictor
from scheduler.replay import ReplayConfig, run_replay
from scheduler.replay import policies as pol
from scheduler.replay.costs import decision_cost_usd
from scheduler.replay.runner import split_matrices
from scheduler.replay.simulated_fleet import (
    KnownPredictions, PolicyRouter, ample_states, fleet_names, simulated_fleet, window_jobs,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mmlu_sample.jsonl"


@pytest.fixture(scope="module")
def sample() -> tuple[OutcomeMatrix, OutcomeMatrix, dict[str, ModelPrice], np.ndarray, np.ndarray]:
    data = read_dataset(SAMPLE)
    train, test, _ = split_matrices(data)
    pred = make_predictor("linear").fit(train.prompts, train.scores, train.output_tokens, train.models,
                                        tasks=train.tasks).predict(test.prompts, tasks=test.tasks)
    tokens = np.full(pred.p_success.shape, 256.0) if pred.output_tokens is None else pred.output_tokens
    return train, test, data.prices, pred.p_success, tokens


def test_fleet_names_are_valid_and_unique() -> None:
    names = fleet_names(["mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4", "GPT-4", "meta/llama 3"])
    assert names == ["mistralai-mixtral-8x7b-instruct-v0.1", "gpt-4", "gpt-4-2", "meta-llama-3"]


def test_the_production_estimate_is_the_replay_decision_cost(sample: tuple) -> None:
    train, test, prices, p, tokens = sample
    fleet = simulated_fleet(test.models, prices, train, window=len(test.ids))
    jobs = window_jobs(test.ids, test.prompts, alpha=0.8)
    est = estimate_window(jobs, fleet, ample_states(fleet, len(jobs)), p, tokens)
    np.testing.assert_allclose(est.cost_usd, decision_cost_usd(test, train, prices, tokens, 256), rtol=1e-12)


def test_an_unpriced_model_costs_its_training_price_per_prompt_token() -> None:
    def rec(i: int, split: str, cost: float) -> OutcomeRecord:
        return OutcomeRecord(f"r{i}", "x" * 400, "t", Split(split), {"Some/Model": Outcome(1.0, cost, None)})

    train = OutcomeMatrix.from_records([rec(0, "train", 0.2), rec(1, "train", 0.4)], ["Some/Model"])
    test = OutcomeMatrix.from_records([rec(2, "test", 123.0)], ["Some/Model"])
    fleet = simulated_fleet(test.models, {"Some/Model": ModelPrice()}, train, window=1)
    jobs = window_jobs(test.ids, test.prompts, alpha=0.5)
    est = estimate_window(jobs, fleet, ample_states(fleet, 1), np.ones((1, 1)), np.full((1, 1), 500.0))
    assert est.cost_usd[0, 0] == pytest.approx(0.3)   # 100 prompt tokens at the train mean; output free
    assert est.cost_usd[0, 0] == pytest.approx(decision_cost_usd(test, train, {"Some/Model": ModelPrice()},
                                                                 None, 256)[0, 0])


def test_the_switchyard_curve_is_scored_from_the_policys_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    plans: list[Plan] = []
    real_plan = OptimizingPolicy.plan

    def recording_plan(self: OptimizingPolicy, *args: object, **kwargs: object) -> Plan:
        result = real_plan(self, *args, **kwargs)  # type: ignore[arg-type]
        plans.append(result)
        return result

    monkeypatch.setattr(OptimizingPolicy, "plan", recording_plan)
    data = read_dataset(SAMPLE)
    report = run_replay(data, ReplayConfig(alphas=(0.8,), window=100, margin="none", refine_steps=0,
                                           predictor="linear"))
    train, test, _ = split_matrices(data)
    order = np.random.default_rng(0).permutation(len(test.ids))
    assert len(plans) == int(np.ceil(len(test.ids) / 100))           # one plan per window
    assert all(not plan.deferrals for plan in plans)
    assert all("batch mean >= 0.80" in a.reason for plan in plans for a in plan.assignments)
    column = {name: j for j, name in enumerate(fleet_names(test.models))}
    row = {job_id: i for i, job_id in enumerate(test.ids)}
    picked = {a.job_id: column[a.model] for plan in plans for a in plan.assignments}
    rows = np.array([row[job_id] for job_id in picked])
    cols = np.array(list(picked.values()))
    assert sorted(rows.tolist()) == sorted(order.tolist())
    real = realised_cost_usd(test, data.prices)
    point = report.policies["switchyard"][0]
    assert point.quality == pytest.approx(float(test.scores[rows, cols].mean()))
    assert point.cost_usd == pytest.approx(float(real[rows, cols].sum()))


def test_the_production_path_decides_as_the_direct_optimizer_call(sample: tuple) -> None:
    """Every job placed in its window (must_place), even where alpha is out of reach: the same
    plans as the optimizer called directly with an infinite deferral penalty."""
    train, test, prices, p, tokens = sample
    cost = decision_cost_usd(test, train, prices, tokens, 256)
    router = PolicyRouter(simulated_fleet(test.models, prices, train, 64), test.ids, test.prompts, p, tokens,
                          pol.SolverChoice(), 64)
    for alpha in (0.70, 0.78, 0.86, 0.99):   # 0.99 is above what any plan reaches: relaxed, nobody deferred
        direct = pol.ilp_policy(p, cost, alpha, 64, pol.SolverChoice())
        np.testing.assert_array_equal(router.route(alpha), direct)


def test_without_must_place_the_policy_would_defer_to_lift_the_mean(sample: tuple) -> None:
    """Why replay sets must_place: production may defer a job to raise its batch's mean when
    alpha is out of reach; a replayed window has no later tick for it."""
    train, test, prices, p, tokens = sample
    fleet = simulated_fleet(test.models, prices, train, 64)
    policy = OptimizingPolicy(fleet, KnownPredictions(test.ids, p, tokens), method="fast")
    jobs = window_jobs(test.ids[:64], test.prompts[:64], alpha=0.99)
    free = [replace(j, must_place=False) for j in jobs]
    assert policy.plan(free, ample_states(fleet, 64), jobs[0].created_at, "t").deferrals
    assert not policy.plan(jobs, ample_states(fleet, 64), jobs[0].created_at, "t").deferrals
