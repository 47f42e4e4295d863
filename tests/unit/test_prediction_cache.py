"""The tick's prediction cache: a job is scored once per predictor version, not once per tick."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scheduler.fleet import load_fleet
from scheduler.learning.fleet_predictor import FleetPredictor, PredictionCache
from scheduler.predictor import make_predictor

FLEET_FILE = Path(__file__).resolve().parents[2] / "scheduler" / "fleet.default.toml"


class CountingPredictor:
    """Wraps a real fitted predictor and counts the prompts it is asked to score."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        prompts = [f"question {i} about {'maths' if i % 2 else 'history'}" for i in range(60)]
        scores = (rng.random((60, 2)) < 0.6).astype(float)
        self.inner = make_predictor("eccos-r").fit(prompts, scores, None, ["smollm2-135m", "gemma-3-270m"])
        self.name = self.inner.name
        self.scored = 0

    def predict(self, prompts, tasks=None):  # type: ignore[no-untyped-def]
        self.scored += len(prompts)
        return self.inner.predict(prompts, tasks)


def test_waiting_jobs_are_scored_once_per_version() -> None:
    fleet = load_fleet(FLEET_FILE)
    fitted = CountingPredictor()
    cache = PredictionCache()
    prompts, keys = [f"new maths question {i}" for i in range(10)], [f"job-{i}" for i in range(10)]
    first = FleetPredictor(fleet, fitted, "v1", cache).predict(prompts, keys)   # type: ignore[arg-type]
    again = FleetPredictor(fleet, fitted, "v1", cache).predict(prompts[::-1] + ["one more"],
                                                              keys[::-1] + ["job-new"])  # type: ignore[arg-type]
    assert fitted.scored == 11                                  # ten, then only the new job
    assert np.array_equal(again.p_success[:10], first.p_success[::-1])
    uncached = FleetPredictor(fleet, fitted, "v1").predict(prompts)   # type: ignore[arg-type]
    assert np.array_equal(uncached.p_success, first.p_success)
    FleetPredictor(fleet, fitted, "v2", cache).predict(prompts, keys)   # type: ignore[arg-type]
    assert fitted.scored == 11 + 10 + 10                        # a new version scores everything again
