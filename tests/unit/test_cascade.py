"""Cascade strategies as optimizer columns (scheduler/cascade.py), in the policy and in replay."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from scheduler.cascade import (ALWAYS, CascadeModel, CascadeStrategy, Judge, accepts, best_answer, candidate_strategies,
                               run_cascade)
from scheduler.cli.replay_cmd import register
from scheduler.datasets import read_dataset
from scheduler.fleet import Fleet, ModelSpec
from scheduler.plan import Assignment, Escalation, ModelState, Plan, WindowJob
from scheduler.policy import OptimizingPolicy
from scheduler.replay import ReplayConfig, run_replay
from scheduler.replay.cascade_replay import run_plans
from scheduler.replay.simulated_fleet import KnownPredictions

GSM8K = Path(__file__).resolve().parents[1] / "data" / "gsm8k_sample.jsonl"
NOW = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)


def table_judge(first: np.ndarray, pair: np.ndarray) -> Judge:
    """A judge from arrays: p of a's answer alone (first[:, a]) or given b's (pair[:, a, b])."""
    def judge(a: int, others: tuple[int, ...]) -> np.ndarray:
        return first[:, a] if not others else pair[:, a, others[0]]
    return judge


def test_the_cascade_rule() -> None:
    nan = np.nan
    first = np.array([[0.9, nan], [0.2, nan], [0.2, nan], [nan, nan], [0.2, nan]])
    pair = np.full((5, 2, 2), nan)
    pair[:, 0, 1] = [0.1, 0.8, 0.3, nan, 0.5]      # the first answer judged beside the next one
    pair[:, 1, 0] = [0.9, 0.4, 0.7, 0.6, nan]      # the next answer judged beside the first one
    scores = np.array([[1.0, 0.0]] * 5)
    ran, final = run_cascade(CascadeStrategy((0, 1), (0.5,)), table_judge(first, pair), scores)
    assert ran[:, 1].tolist() == [False, True, True, True, True]   # an unjudged answer escalates
    # kept: the first answer (accepted); the first (higher p beside the other); the next one;
    # the next one (first unjudged); the first (the next one's p unknown)
    assert final.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_a_second_opinion_then_the_dear_model() -> None:
    """k -> l always -> g below 0.6: two cheap answers that agree stop; a disagreement escalates."""
    first = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    p = {(0, (1,)): [0.9, 0.3], (1, (0,)): [0.8, 0.2], (0, (1, 2)): [0.5, 0.1], (1, (0, 2)): [0.5, 0.2],
         (2, (0, 1)): [0.5, 0.9]}

    def judge(a: int, others: tuple[int, ...]) -> np.ndarray:
        return first[:, a] if not others else np.array(p[(a, others)])

    scores = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ran, final = run_cascade(CascadeStrategy((0, 1, 2), (ALWAYS, 0.6)), judge, scores)
    assert ran.tolist() == [[True, True, False], [True, True, True]]
    assert final.tolist() == [1.0, 1.0]


def synthetic(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Judge]:
    """Two models: a cheap one right 60% of the time, a dear one 90%; the post-hoc p of the cheap
    answer separates its right answers from its wrong ones."""
    rng = np.random.default_rng(seed)
    scores = np.column_stack([rng.random(n) < 0.6, rng.random(n) < 0.9]).astype(float)
    ex_ante = np.column_stack([np.clip(0.6 + rng.normal(0, 0.1, n), 0.05, 0.95),
                               np.clip(0.9 + rng.normal(0, 0.03, n), 0.05, 0.99)])
    first = np.column_stack([np.where(scores[:, 0] == 1, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.6, n)),
                             rng.uniform(0.5, 1.0, n)])
    pair = np.full((n, 2, 2), np.nan)
    pair[:, 0, 1] = first[:, 0] * 0.5
    pair[:, 1, 0] = first[:, 1]
    return scores, ex_ante, table_judge(first, pair)


def test_the_model_learns_cheap_to_dear_strategies_and_their_odds() -> None:
    scores, ex_ante, judge = synthetic()
    model = CascadeModel(thresholds=(0.3, 0.5, 0.7)).fit(["cheap", "dear"], scores, ex_ante, judge, [1.0, 10.0])
    assert model.candidates_ == 3                                         # never dear -> cheap
    assert all(s.models == (0, 1) for s in model.strategies)
    thresholds = [s.accept_at[0] for s in model.strategies]
    quality, runs = model.estimate(ex_ante[:50])
    assert quality.shape == (50, len(thresholds)) and runs[0].shape == (50, 2)
    mean_esc = [float(r[:, 1].mean()) for r in runs]
    assert mean_esc == sorted(mean_esc)                                   # a higher bar escalates more
    for t, esc in zip(thresholds, mean_esc, strict=True):
        assert esc == pytest.approx(np.mean(judge(0, ())[:] < t), abs=0.06)
    assert quality.mean(axis=0)[-1] > 0.75
    assert model.describe(0).startswith("cheap then dear if post-hoc p < ")
    costs = [c for c, _ in model.train_means_]
    qualities = [q for _, q in model.train_means_]
    assert costs == sorted(costs) and qualities == sorted(qualities)      # only undominated strategies
    every = CascadeModel(thresholds=(0.3, 0.5, 0.7), prune=False).fit(["cheap", "dear"], scores, ex_ante, judge,
                                                                      [1.0, 10.0])
    assert len(every.strategies) == 3


def test_candidates_include_second_opinions_from_the_cheapest_models() -> None:
    shapes = {s.models for s in candidate_strategies(np.array([1.0, 2.0, 3.0, 10.0]), thresholds=(0.5,),
                                                     second_opinion_thresholds=(ALWAYS,), pool=2)}
    assert (0, 1, 2) in shapes and (0, 1, 3) in shapes        # cheapest two, then any dearer model
    assert (0, 2, 3) not in shapes                             # the second opinion comes from the pool
    assert all(len(set(m)) == len(m) for m in shapes)


def fleet(capacity: int = 100) -> Fleet:
    return Fleet(models=(
        ModelSpec(name="cheap", backend="echo", weights="x", usd_per_mtok_input=1.0, usd_per_mtok_output=1.0,
                  capacity_jobs=capacity),
        ModelSpec(name="dear", backend="echo", weights="x", usd_per_mtok_input=10.0, usd_per_mtok_output=10.0,
                  capacity_jobs=100)))


def window(n: int, alpha: float, deadline_at: dt.datetime | None = None) -> list[WindowJob]:
    return [WindowJob(id=f"j{i}", batch_id="b", prompt_text="q" * 400, max_tokens=100, min_quality=None,
                      deadline_at=deadline_at, allowed_models=None, max_cost_usd=None, batch_alpha=alpha,
                      created_at=NOW, attempts=0) for i in range(n)]


def plan_with_cascade(jobs: list[WindowJob], capacity: int = 100) -> Plan:
    scores, ex_ante, judge = synthetic()
    model = CascadeModel(thresholds=(0.5,)).fit(["cheap", "dear"], scores, ex_ante, judge, [1.0, 10.0])
    p = np.tile([[0.6, 0.9]], (len(jobs), 1))
    predictor = KnownPredictions([j.id for j in jobs], p, np.full(p.shape, 100.0))
    states = [ModelState("cheap", live_workers=100, backlog_jobs=0), ModelState("dear", live_workers=100,
                                                                                backlog_jobs=0)]
    return OptimizingPolicy(fleet(capacity), predictor, horizon_s=86_400, cascade=model).plan(jobs, states, NOW, "t")


def test_the_policy_plans_a_cascade_as_data_with_its_reason() -> None:
    plan = plan_with_cascade(window(20, alpha=0.75))
    cascaded = [a for a in plan.assignments if a.cascade]
    assert cascaded, [a.reason for a in plan.assignments]
    a = cascaded[0]
    assert a.model == "cheap" and a.cascade == (Escalation(0.5, "dear"),)
    assert a.reason.startswith("cascade: cheap then dear if post-hoc p < 0.50 (expected p=")
    assert "batch mean >= 0.75" in a.reason
    assert any("cascade strategies offered: 1" in note for note in plan.notes)
    # cheaper than sending everyone to the dear model, which also meets 0.75
    direct_dear = 20 * 10.0 * 200 / 1e6
    assert plan.objective_usd < direct_dear


def test_in_a_scarce_tick_cascades_and_direct_runs_share_the_first_models_slots() -> None:
    # 15 free slots on the cheap model for 20 jobs: cascades are still offered (before, only a
    # first model with room for the whole window got them), and the jobs that start on the cheap
    # model, directly or as a cascade, take at most its 15 slots.
    plan = plan_with_cascade(window(20, alpha=0.75), capacity=15)
    on_cheap = [a for a in plan.assignments if a.model == "cheap"]
    assert [a for a in on_cheap if a.cascade], [a.reason for a in plan.assignments]
    assert len(on_cheap) <= 15 and len(plan.assignments) == 20
    assert any("cascade strategies offered: 1" in note for note in plan.notes)


def test_no_cascade_where_a_deadline_binds() -> None:
    soon = window(20, alpha=0.75, deadline_at=NOW + dt.timedelta(hours=1))
    assert not [a for a in plan_with_cascade(soon).assignments if a.cascade]


def test_running_plans_pays_every_model_run_and_reads_only_answers_of_models_run() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cost = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    nan = np.nan
    # job 0: accepted at 0.8; job 1: escalated (0.2 < 0.5), the next answer kept; job 2 direct to
    # cheap: its "dear" answer's p is garbage that must not be read
    judge = table_judge(np.array([[0.8, nan], [0.2, nan], [0.1, 99.0]]),
                        np.array([[[nan, nan], [nan, nan]], [[nan, 0.1], [0.9, nan]], [[nan, 99.0], [99.0, nan]]]))
    step = (Escalation(0.5, "dear"),)
    plans = [Plan("t", NOW, "p", (Assignment("a", "cheap", 0.7, 1.0, "r", cascade=step),
                                  Assignment("b", "cheap", 0.7, 1.0, "r", cascade=step),
                                  Assignment("c", "cheap", 0.7, 1.0, "r")), ())]
    run = run_plans(plans, ["a", "b", "c"], {"cheap": 0, "dear": 1}, judge, scores, cost)
    assert run.score.tolist() == [1.0, 1.0, 0.0]
    assert run.cost_usd.tolist() == [1.0, 11.0, 1.0]
    assert run.models_run.tolist() == [1, 2, 1] and run.escalated.tolist() == [False, True, False]
    assert run.summary() == {"models_run_per_job": pytest.approx(4 / 3), "share_escalated": pytest.approx(1 / 3)}


def test_replay_reports_the_cascade_curve_on_real_answers() -> None:
    report = run_replay(read_dataset(GSM8K), ReplayConfig(alphas=(0.65, 0.75), window=64, margin="noise",
                                                           refine_steps=0, predictor="linear", cascade=True))
    points = report.policies["switchyard-cascade"]
    assert [p.alpha for p in points] == [0.65, 0.75]
    details = report.details["cascade"]
    assert details["candidates"] == 7                         # Mixtral -> GPT-4 at each threshold
    assert 1 <= details["strategies"] <= 7                    # those no other beats on train
    assert [p["alpha"] for p in details["points"]] == [0.65, 0.75]
    for p in details["points"]:
        assert 1.0 <= p["models_run_per_job"] <= 2.0
        assert p["share_escalated"] == pytest.approx(p["models_run_per_job"] - 1.0)
    assert report.details["models_run_at_reach_best"]["switchyard"] == {"models_run_per_job": 1.0,
                                                                       "share_escalated": 0.0}
    # realised cost counts both runs: never below running only the first models chosen
    assert all(p.cost_usd > 0 for p in points)


def test_the_replay_command_refuses_a_cascade_without_answers() -> None:
    app = typer.Typer()
    register(app)
    mmlu = GSM8K.with_name("mmlu_sample.jsonl")
    result = CliRunner().invoke(app, ["replay", str(mmlu), "--alpha", "0.8", "--cascade", "--margin", "none"])
    assert result.exit_code == 2
    assert "logs no answers" in result.output


def test_the_kept_answer_is_the_highest_p_the_later_on_a_tie_and_an_unjudged_one_last() -> None:
    # rows: answers in the order they ran; columns: jobs
    p = np.array([[0.7, 0.5, np.nan, np.nan],
                  [0.4, 0.5, 0.2, np.nan]])
    assert best_answer(p).tolist() == [0, 1, 1, 1]
    assert accepts(0.55, 0.55) and not accepts(0.54, 0.55) and not accepts(np.nan, 0.3)
