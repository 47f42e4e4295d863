"""Replay end to end on a shipped sample: JSON shape, policy sanity, no test leakage, CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from scheduler.cli.replay_cmd import register
from scheduler.datasets import ModelPrice, Outcome, OutcomeMatrix, OutcomeRecord, Split, read_dataset
from scheduler.replay import ReplayConfig, run_replay, sweep_alphas
from scheduler.replay.costs import decision_cost_usd
from scheduler.replay.policies import best_single_model, eccos_rule, oracle_best, task_rates
from scheduler.replay.report import PolicyPoint, alpha_met_rate, area_under_curve, reach_best

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mmlu_sample.jsonl"
ALPHAS = (0.72, 0.78, 0.84)


@pytest.fixture(scope="module")
def report_json() -> dict:
    report = run_replay(read_dataset(SAMPLE), ReplayConfig(alphas=ALPHAS, window=64, margin="noise", refine_steps=0))
    return report.to_json()


def test_bisection_adds_real_points_between_the_alphas_and_only_lowers_reach_best(report_json: dict) -> None:
    refined = run_replay(read_dataset(SAMPLE), ReplayConfig(alphas=ALPHAS, window=64, margin="noise",
                                                            refine_steps=3)).to_json()
    for name in ("oracle", "task-oracle", "switchyard"):
        grid = [p for p in report_json["policies"][name] if p["alpha"] is not None]
        points = [p for p in refined["policies"][name] if p["alpha"] is not None]
        assert [p for p in points if p["alpha"] in ALPHAS] == grid       # the swept points are untouched
        extra = [p["alpha"] for p in points if p["alpha"] not in ALPHAS]
        assert len({p["alpha"] for p in points}) == len(points)          # each alpha routed and listed once
        assert all(ALPHAS[0] < a < ALPHAS[-1] for a in extra)
        if report_json["reach_best"][name] is not None:
            assert refined["reach_best"][name] <= report_json["reach_best"][name]
        assert refined["alpha_met_rate"][name] == report_json["alpha_met_rate"][name]   # judged on ALPHAS only
    assert any(p["alpha"] not in ALPHAS for p in refined["policies"]["oracle"] if p["alpha"] is not None)


def test_json_has_the_issue_shape(report_json: dict) -> None:
    r = report_json
    assert r["dataset"] == "mmlu_sample"
    assert r["n_train"] > 500 and r["n_test"] > 200
    assert set(r["best_single"]) == {"model", "quality", "cost_usd"}
    expected = {"gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "random", "oracle",
                "task-oracle", "eccos-r-rule", "eccos-ilp", "switchyard"}
    assert set(r["policies"]) == expected and set(r["reach_best"]) == expected
    for name in ("task-oracle", "eccos-r-rule", "eccos-ilp", "switchyard"):
        assert [p["alpha"] for p in r["policies"][name]] == list(ALPHAS)
    for points in r["policies"].values():
        for p in points:
            assert set(p) == {"alpha", "quality", "cost_usd", "cost_share_of_best", "alpha_met"}
            assert (p["alpha"] is None) == (p["alpha_met"] is None)
    json.dumps(r)  # serialisable as is


def test_oracle_beats_every_single_model_for_no_more_money(report_json: dict) -> None:
    r = report_json
    best_cost = r["best_single"]["cost_usd"]
    oracle = r["policies"]["oracle"][0]
    assert oracle["alpha"] is None
    for model in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"):
        single = r["policies"][model][0]
        assert oracle["quality"] >= single["quality"]
    assert oracle["cost_usd"] <= best_cost
    assert r["reach_best"]["oracle"] is not None and r["reach_best"]["oracle"] < 1.0
    assert r["reach_best"]["gpt-4-1106-preview"] == pytest.approx(1.0)


def test_switchyard_meets_its_alphas_and_cost_grows_with_alpha(report_json: dict) -> None:
    points = report_json["policies"]["switchyard"]
    best = report_json["best_single"]["quality"]
    assert all(p["alpha_met"] for p in points if p["alpha"] <= best)
    costs = [p["cost_usd"] for p in points]
    assert costs == sorted(costs)


def test_decisions_cannot_see_test_outcomes() -> None:
    data = read_dataset(SAMPLE)
    train = OutcomeMatrix.from_records(data.split("train"), data.models)
    test = OutcomeMatrix.from_records(data.split("test"), data.models)
    scrambled = replace(test, scores=np.zeros_like(test.scores), cost_usd=np.full_like(test.cost_usd, 9.0),
                        output_tokens=np.full_like(test.output_tokens, 9999.0))
    a = decision_cost_usd(test, train, data.prices, None, 256)
    b = decision_cost_usd(scrambled, train, data.prices, None, 256)
    np.testing.assert_array_equal(a, b)


def test_unpriced_model_is_priced_from_training_costs() -> None:
    def rec(i: int, split: str, cost: float) -> OutcomeRecord:
        return OutcomeRecord(f"r{i}", "x" * 400, "t", Split(split), {"m": Outcome(1.0, cost, None)})

    train = OutcomeMatrix.from_records([rec(0, "train", 0.2), rec(1, "train", 0.4)], ["m"])
    test = OutcomeMatrix.from_records([rec(2, "test", 123.0)], ["m"])
    cost = decision_cost_usd(test, train, {"m": ModelPrice()}, None, 256)
    assert cost[0, 0] == pytest.approx(0.3)


def test_policy_rules() -> None:
    p = np.array([[0.9, 0.95], [0.5, 0.7], [0.2, 0.3]])
    c = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    assert eccos_rule(p, c, 0.8).tolist() == [0, 1, 1]   # cheapest with p >= alpha, else highest p
    scores = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    assert oracle_best(scores, c).tolist() == [0, 1, 0]
    # task-oracle sees each task's realised rate, the same for every query of the task
    rates = task_rates(scores, ["a", "b", "a"])
    np.testing.assert_allclose(rates, [[0.5, 0.5], [0.0, 1.0], [0.5, 0.5]])


def test_query_oracle_beats_the_task_oracle(report_json: dict) -> None:
    """Knowing each query's outcome reaches further, and more cheaply, than knowing each task's rate."""
    reach = report_json["reach_best"]
    assert reach["oracle"] is not None and reach["task-oracle"] is not None
    assert reach["oracle"] <= reach["task-oracle"]
    top = {name: max(p["quality"] for p in report_json["policies"][name]) for name in ("task-oracle", "oracle")}
    assert top["task-oracle"] <= top["oracle"]


def test_best_single_model_is_the_cheapest_of_the_best() -> None:
    assert best_single_model(np.array([0.8, 0.9, 0.9]), np.array([1.0, 5.0, 2.0])) == 2
    assert best_single_model(np.array([0.0, 0.0]), np.array([3.0, 1.0])) == 1      # nobody right: the cheap one


def test_report_summaries() -> None:
    pts = [PolicyPoint(0.7, 0.71, 1.0, 0.2, True), PolicyPoint(0.8, 0.78, 2.0, 0.4, True),
           PolicyPoint(0.9, 0.85, 4.0, 0.8, False)]
    assert reach_best(pts, 0.78) == 0.4 and reach_best(pts, 0.9) is None
    assert alpha_met_rate(pts, 0.85) == pytest.approx(2 / 2) and alpha_met_rate(pts, 0.95) == pytest.approx(2 / 3)
    assert alpha_met_rate(pts, 0.95, judged_alphas=[0.7, 0.9]) == pytest.approx(1 / 2)   # the grid, not extra points
    assert area_under_curve(pts) == pytest.approx(0.71 * 0.2 + 0.78 * 0.4 + 0.85 * 0.2)
    grid = sweep_alphas([0.63, 0.873], 0.95)
    assert grid[0] == pytest.approx(0.63) and 0.873 in grid and grid[-1] <= 0.95


def test_replay_command_writes_json_and_plot(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(app, ["replay", str(SAMPLE), "--alpha", "0.8", "--window", "100",
                                      "--margin", "none", "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "switchyard" in result.output
    assert json.loads(out.read_text())["policies"]["switchyard"][0]["alpha"] == 0.8
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["replay", str(SAMPLE), "--alpha", "0.8", "--sweep"])
    assert bad.exit_code != 0
