"""Online replay: bandit feedback only, oracle regret 0, cold-start exploration, CLI."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from scheduler.cli.replay_cmd import register
from scheduler.datasets import (
    ModelPrice,
    Outcome,
    OutcomeDataset,
    OutcomeMatrix,
    OutcomeRecord,
    Split,
    read_dataset,
    write_dataset,
)
from scheduler.datasets.costing import realised_cost_usd
from scheduler.learning.exploration import Exploration, Feedback
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.learning.learner import fit_predictor
from scheduler.learning.training import TrainingSet
from scheduler.policy import OptimizingPolicy
from scheduler.replay.online import (
    EXPLORING,
    GREEDY,
    ORACLE,
    LearningPolicy,
    OnlineConfig,
    default_alpha,
    run_online,
    run_online_repeats,
)
from scheduler.replay.simulated_fleet import REPLAY_NOW, ample_states, simulated_fleet, window_jobs
from scheduler.replay.online_plot import plot_online
from scheduler.replay.online_report import OnlineReport, repeats_json, summarise_runs

# Four models; the cheapest ("a") is right 60% of the time, the dearest ("d") always.
RATES = {"a": 0.6, "b": 0.3, "c": 0.7, "d": 1.0}
PRICES = {"a": 0.1, "b": 0.5, "c": 2.0, "d": 10.0}


def _synthetic(n_train: int = 40, n_test: int = 300, seed: int = 1) -> OutcomeDataset:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "sigma", "omega", "kappa", "theta"]
    records = []
    for i in range(n_train + n_test):
        prompt = " ".join(rng.choice(words, size=12)) + f" q{i % 7}"
        outcomes = {m: Outcome(float(rng.random() < r), None, 8) for m, r in RATES.items()}
        records.append(OutcomeRecord(f"r{i}", prompt, f"t{i % 3}", Split.TRAIN if i < n_train else Split.TEST,
                                     outcomes))
    prices = {m: ModelPrice(p, p) for m, p in PRICES.items()}
    return OutcomeDataset("synthetic", tuple(records), prices)


@pytest.fixture(scope="module")
def cold_report() -> OnlineReport:
    return run_online(_synthetic(), OnlineConfig(alpha=0.8, window=50, cold=True))


def test_oracle_has_zero_regret_and_regret_is_cumulative(cold_report: OnlineReport) -> None:
    report = cold_report
    oracle = report.policies[ORACLE]
    assert oracle.score_regret == 0.0 and oracle.cost_regret_usd == 0.0
    assert all(w.cum_score_regret == 0.0 and w.cum_cost_regret_usd == 0.0 for w in oracle.windows)
    for pol in report.policies.values():
        assert [w.end for w in pol.windows] == [50, 100, 150, 200, 250, 300]
        assert pol.windows[-1].cum_score_regret == pytest.approx(pol.score_regret)
        assert sum(pol.jobs_per_model.values()) == 300
        assert sum(w.cost_usd for w in pol.windows) == pytest.approx(pol.cost_usd)
    # always using the dearest model: never fewer successes than the oracle, never cheaper
    assert report.policies["best-single"].score_regret <= 0 < report.policies["best-single"].cost_regret_usd
    json.dumps(report.to_json())


def test_cold_start_exploration_tries_every_model_and_greedy_does_not(cold_report: OnlineReport) -> None:
    report = cold_report
    counts = report.details["label_counts_online"]
    assert all(n > 0 for n in counts[EXPLORING].values()), counts[EXPLORING]
    assert sum(counts[EXPLORING].values()) == 300
    # greedy with a 0.5 prior settles on the first model that beats the prior and never looks further
    assert any(n == 0 for n in counts[GREEDY].values()), counts[GREEDY]
    assert report.n_history_initial == 0 and report.mode == "cold"
    assert sum(w.explored for w in report.policies[EXPLORING].windows) > 0
    assert all(w.explored == 0 for w in report.policies[GREEDY].windows)


def _learning_policy(data: OutcomeDataset, config: OnlineConfig, exploration: Exploration | None
                     ) -> tuple[LearningPolicy, OutcomeMatrix]:
    stream = OutcomeMatrix.from_records(data.split(Split.TEST), data.models)
    fleet = simulated_fleet(data.models, data.prices, stream.subset(np.zeros(len(stream.ids), dtype=bool)),
                            config.window)
    return LearningPolicy(EXPLORING, config, fleet, None, stream, exploration), stream


def test_only_the_chosen_outcome_is_revealed() -> None:
    data = _synthetic()
    config = OnlineConfig(alpha=0.8, window=25, cold=True)
    learner, stream = _learning_policy(data, config, Exploration(0.2, 30))
    assert learner.n == 0
    seen_rows = explored = 0
    for w, start in enumerate((0, 25, 50)):
        sl = slice(start, start + 25)
        planned, margin = learner.decide(sl, 0.8, w)
        assert margin == 0.0 and not np.isnan(planned.p).any()
        learner.reveal(sl, planned)
        pick = planned.model
        hist = learner.scores[start:start + 25]
        observed = ~np.isnan(hist)
        assert (observed.sum(axis=1) == 1).all()                     # one outcome per job...
        assert (np.argmax(observed, axis=1) == pick).all()           # ...the chosen model's
        assert np.array_equal(hist[np.arange(25), pick], stream.scores[sl][np.arange(25), pick])
        seen_rows += 25
        assert learner.n == seen_rows and learner.label_counts(learner.n0).sum() == seen_rows
        explored += int(planned.exploring.sum())
        # the promise check counts only the jobs the optimizer chose, not the explorers
        assert len(learner.promised) == len(learner.realised) == seen_rows - explored
        assert learner.refit()
    assert learner.fits == 3 and learner.fitted is not None
    assert learner.fitted.label_counts == dict(zip(learner.fleet.names, learner.label_counts().tolist()))
    assert np.isnan(learner.scores[learner.n:]).all()                 # nothing beyond the arrivals so far


def test_learning_policies_decide_with_one_production_plan_per_window() -> None:
    """The first window of a warm start is exactly what OptimizingPolicy.plan decides on the
    simulated fleet with the production fit of the train split, exploration and feedback."""
    data = _synthetic()
    exploration = Exploration(0.5, 100)    # 40 train labels per model: every model under-explored
    config = OnlineConfig(alpha=0.8, window=50, use_tasks=False, exploration=exploration)
    report = run_online(data, config)
    train = OutcomeMatrix.from_records(data.split(Split.TRAIN), data.models)
    test = OutcomeMatrix.from_records(data.split(Split.TEST), data.models)
    stream = test.subset(np.random.default_rng(config.seed).permutation(len(test.ids)))
    cost = realised_cost_usd(stream, data.prices)
    fleet = simulated_fleet(data.models, data.prices, train, config.window)
    fitted = fit_predictor("linear", TrainingSet(train.prompts, train.scores, train.output_tokens, fleet.names))
    counts = tuple(int(c) for c in (~np.isnan(train.scores)).sum(axis=0))
    jobs = window_jobs(stream.ids[:50], stream.prompts[:50], 0.8)
    for name, explore in ((EXPLORING, exploration), (GREEDY, None)):
        policy = OptimizingPolicy(fleet, FleetPredictor(fleet, fitted, "v1"), exploration=explore,
                                  feedback=Feedback(counts, 0.0), rng=np.random.default_rng(config.seed),
                                  method=config.solver.method, backend=config.solver.backend,
                                  time_limit_s=config.solver.time_limit_s)
        plan = policy.plan(jobs, ample_states(fleet, len(jobs)), REPLAY_NOW, "t0")
        assert not plan.deferrals
        column = {model: j for j, model in enumerate(fleet.names)}
        pick = np.array([column[a.model] for a in sorted(plan.assignments, key=lambda a: stream.ids.index(a.job_id))])
        first = report.policies[name].windows[0]
        assert first.quality == pytest.approx(float(stream.scores[np.arange(50), pick].mean()))
        assert first.cost_usd == pytest.approx(float(cost[np.arange(50), pick].sum()))
        assert first.explored == sum(a.exploring for a in plan.assignments)
        assert first.mean_p_chosen == pytest.approx(np.mean([a.predicted_quality for a in plan.assignments]))
    assert report.policies[EXPLORING].windows[0].explored > 0 == report.policies[GREEDY].windows[0].explored


def test_decisions_do_not_depend_on_future_outcomes() -> None:
    data = _synthetic()
    config = OnlineConfig(alpha=0.8, window=50, cold=True, shuffle=False)
    base = run_online(data, config)
    # flip every outcome of the last 100 arrivals: the first four windows must route identically
    flipped = tuple(
        rec if i < 240 else replace(rec, outcomes={m: replace(o, score=1.0 - o.score) for m, o in rec.outcomes.items()})
        for i, rec in enumerate(data.records))
    other = run_online(replace(data, records=flipped), config)
    for name in (EXPLORING, GREEDY):
        a, b = base.policies[name].windows[:4], other.policies[name].windows[:4]
        assert [(w.quality, w.cost_usd, w.explored) for w in a] == [(w.quality, w.cost_usd, w.explored) for w in b]


def test_default_alpha_is_between_cheapest_and_best() -> None:
    assert default_alpha(np.array([0.6, 0.3, 0.7, 1.0]), np.array([1.0, 5.0, 20.0, 100.0])) == 0.8
    report = run_online(_synthetic(), OnlineConfig(window=100, cold=True))
    q = report.details["single_quality"]
    assert q["a"] < report.alpha < q["d"] and report.alpha_rule.startswith("midpoint")


def test_warm_start_learns_from_train_and_stream_all_needs_cold() -> None:
    report = run_online(_synthetic(), OnlineConfig(alpha=0.8, window=100))
    assert report.mode == "online" and report.n_history_initial == 40 and report.n_stream == 300
    assert set(report.policies) == {EXPLORING, GREEDY, ORACLE, "best-single", "static"}
    assert report.policies[EXPLORING].fits >= 2
    cold_all = run_online(_synthetic(), OnlineConfig(alpha=0.8, window=100, cold=True, stream="all"))
    assert cold_all.n_stream == 340 and "static" not in cold_all.policies
    with pytest.raises(Exception, match="needs --cold"):
        run_online(_synthetic(), OnlineConfig(stream="all"))


def test_replay_online_command_writes_json_and_plot(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    data = _synthetic(n_test=120)
    path = tmp_path / "syn.jsonl"
    write_dataset(path, data.records, data.prices)
    out, png = tmp_path / "o.json", tmp_path / "o.png"
    result = CliRunner().invoke(app, ["replay", str(path), "--cold", "--window", "40", "--refit-every", "1",
                                      "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "switchyard" in result.output
    r = json.loads(out.read_text())
    assert r["mode"] == "cold" and r["predictor"] == "linear" and r["window"] == 40 and r["n_stream"] == 120
    assert r["policies"]["oracle"]["score_regret"] == 0.0
    assert set(r["policies"]["switchyard"]["windows"][0]) >= {"end", "quality", "cost_usd", "cum_score_regret",
                                                             "cum_cost_regret_usd", "explored", "margin"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    for bad_args in (["--online", "--sweep"], ["--online", "--stream", "all"]):
        bad = CliRunner().invoke(app, ["replay", str(path), *bad_args])
        assert bad.exit_code != 0


def test_warm_start_on_the_mmlu_sample_routes_the_first_window_like_static() -> None:
    sample = Path(__file__).resolve().parents[1] / "data" / "mmlu_sample.jsonl"
    report = run_online(read_dataset(sample), OnlineConfig(window=138, refit_every=1))
    assert report.n_history_initial > 500 and report.n_stream > 200
    first = {name: report.policies[name].windows[0] for name in (EXPLORING, GREEDY, "static")}
    # the imported train split already holds hundreds of labels per model, as an imported dataset
    # does in production: nothing is under-explored, and all three route the first window alike
    # (one fitted predictor, no promise margin yet)
    assert first[EXPLORING].explored == 0 and first[GREEDY].explored == 0 and first[GREEDY].margin == 0.0
    for name in (EXPLORING, GREEDY):
        assert first[name].quality == first["static"].quality
        assert first[name].cost_usd == first["static"].cost_usd
    assert report.policies[EXPLORING].fits == 1 + 1   # the start and one refit between the two windows


def test_repeats_vary_the_seed_and_summarise(tmp_path: Path) -> None:
    data = _synthetic(n_test=100)
    reports = run_online_repeats(data, OnlineConfig(alpha=0.8, window=50, cold=True), 2)
    assert [r.details["seed"] for r in reports] == [0, 1]
    summary = summarise_runs(reports)
    assert summary[ORACLE]["score_regret"] == {"mean": 0.0, "sd": 0.0}
    q = [r.policies[EXPLORING].quality for r in reports]
    assert summary[EXPLORING]["quality"]["mean"] == pytest.approx(np.mean(q))
    blob = repeats_json(reports)
    assert blob["repeats"] == 2 and len(blob["runs"]) == 2 and blob["seeds"] == [0, 1]
    json.dumps(blob)
    plot_online(reports, tmp_path / "mean.png")
    assert (tmp_path / "mean.png").read_bytes()[:4] == b"\x89PNG"
