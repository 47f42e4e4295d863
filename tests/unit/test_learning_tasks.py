"""Task labels through the production fit and FleetPredictor (the replay passes them; production
jobs carry none): a TrainingSet's tasks reach the predictor, and predictions with tasks bypass the
per-job cache."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.fleet import BackendKind, Fleet, ModelSpec
from scheduler.learning.fleet_predictor import FleetPredictor, PredictionCache
from scheduler.learning.learner import fit_predictor
from scheduler.learning.training import TrainingSet

MODELS = ("small", "large")


def _data(with_tasks: bool) -> TrainingSet:
    # the prompt says nothing; the task says everything: "easy" jobs succeed on both models
    n = 80
    tasks = ["easy" if i % 2 else "hard" for i in range(n)]
    scores = np.array([[1.0, 1.0] if t == "easy" else [0.0, 1.0] for t in tasks])
    return TrainingSet([f"same words {i % 5}" for i in range(n)], scores, np.full((n, 2), 10.0), list(MODELS),
                       tasks=tasks if with_tasks else None)


def _fleet(prior_labels: float = 0.0) -> Fleet:
    """The two models; by default the fit is trusted as it is (no blend with the prior)."""
    return Fleet(models=tuple(ModelSpec(name=name, backend=BackendKind.ECHO, weights=f"test:{name}",
                                        usd_per_mtok_input=1.0, usd_per_mtok_output=1.0, quality_prior=0.5,
                                        quality_prior_labels=prior_labels) for name in MODELS))


def test_fit_predictor_passes_the_training_sets_tasks() -> None:
    with_tasks, without = fit_predictor("linear", _data(True)), fit_predictor("linear", _data(False))
    prompts = ["same words 1", "same words 1"]
    p = with_tasks.predict(prompts, tasks=["easy", "hard"]).p_success[:, 0]
    assert p[0] > p[1] + 0.3                                          # the task prior was learnt
    q = without.predict(prompts).p_success[:, 0]
    assert abs(q[0] - q[1]) < 1e-9                                    # nothing to tell them apart


def test_fleet_predictor_hands_tasks_to_the_fitted_predictor_and_skips_the_cache() -> None:
    fitted = fit_predictor("linear", _data(True))
    cache = PredictionCache()
    fleet_predictor = FleetPredictor(_fleet(), fitted, "v1", cache)
    prompts, keys = ["same words 2"] * 2, ["job-1", "job-2"]
    with_tasks = fleet_predictor.predict(prompts, keys=keys, tasks=["easy", "hard"])
    assert np.allclose(with_tasks.p_success, fitted.predict(prompts, tasks=["easy", "hard"]).p_success)
    assert cache.missing("v1", keys) == [0, 1]                        # nothing cached with tasks
    plain = fleet_predictor.predict(prompts, keys=keys)               # production: no tasks, cached
    assert np.allclose(plain.p_success, fitted.predict(prompts).p_success)
    assert cache.missing("v1", keys) == []


def test_a_model_seen_a_few_times_is_pulled_towards_its_prior_and_one_seen_often_is_not() -> None:
    few = TrainingSet(["a", "b"], np.array([[1.0, 1.0], [1.0, 1.0]]), np.full((2, 2), 10.0), list(MODELS))
    many = TrainingSet([f"q{i}" for i in range(1000)], np.ones((1000, 2)), np.full((1000, 2), 10.0), list(MODELS))
    for data, n in ((few, 2), (many, 1000)):
        fitted = fit_predictor("linear", data)
        raw = fitted.predict(["c"]).p_success[0, 0]
        blended = FleetPredictor(_fleet(prior_labels=10.0), fitted, "v").predict(["c"]).p_success[0, 0]
        weight = n / (n + 10.0)
        assert blended == pytest.approx(weight * raw + (1 - weight) * 0.5)
    assert abs(FleetPredictor(_fleet(prior_labels=10.0), fit_predictor("linear", few), "v").predict(["c"])
               .p_success[0, 0] - 0.5) < 0.1                           # two perfect labels promise little
