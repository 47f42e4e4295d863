"""Calibration: a promised p must match the realised rate, on held-out data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scheduler.datasets import OutcomeMatrix, read_dataset
from scheduler.predictor import brier_score, calibration_report, expected_calibration_error, make_predictor
from scheduler.predictor.calibration import Calibrator, within_task_auc

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mmlu_sample.jsonl"


def test_ece_of_a_perfect_and_a_biased_forecaster() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(p.size) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.02
    assert abs(expected_calibration_error(np.clip(p + 0.2, 0, 1), y) - 0.2) < 0.05
    assert brier_score(p, y) < brier_score(np.clip(p + 0.2, 0, 1), y)


def test_platt_and_isotonic_repair_a_distorted_score_on_held_out_rows() -> None:
    rng = np.random.default_rng(1)
    true_p = rng.beta(2, 2, size=(6000, 2))
    y = (rng.random(true_p.shape) < true_p).astype(float)
    raw = true_p ** 3                      # ranks right, promises far too little
    fit, held = slice(0, 4000), slice(4000, None)
    for method in ("platt", "isotonic"):
        cal = Calibrator(method).fit(raw[fit], y[fit])
        fixed = cal.transform(raw[held])
        for j in range(2):
            before = expected_calibration_error(raw[held, j], y[held, j])
            after = expected_calibration_error(fixed[:, j], y[held, j])
            assert after < 0.04 < before
            assert brier_score(fixed[:, j], y[held, j]) < brier_score(raw[held, j], y[held, j])


def _sample() -> tuple[OutcomeMatrix, OutcomeMatrix]:
    data = read_dataset(SAMPLE)
    train = OutcomeMatrix.from_records(data.split("train"), data.models)
    test = OutcomeMatrix.from_records(data.split("test"), data.models)
    return train, test


def test_calibration_lowers_ece_and_brier_on_the_held_out_split() -> None:
    train, test = _sample()
    pred = make_predictor("knn-beta").fit(train.prompts, train.scores, None, train.models, tasks=train.tasks)
    raw = pred.predict_uncalibrated(test.prompts, test.tasks)
    cal = pred.predict(test.prompts, test.tasks).p_success
    raw_ece = np.mean([expected_calibration_error(raw[:, j], test.scores[:, j]) for j in range(2)])
    cal_ece = np.mean([expected_calibration_error(cal[:, j], test.scores[:, j]) for j in range(2)])
    assert cal_ece < raw_ece
    assert brier_score(cal, test.scores) <= brier_score(raw, test.scores) + 1e-3


def test_promised_p_tracks_the_realised_rate_better_than_eccos() -> None:
    train, test = _sample()
    ours = make_predictor("switchyard").fit(train.prompts, train.scores, None, train.models, tasks=train.tasks)
    eccos = make_predictor("eccos-r").fit(train.prompts, train.scores, None, train.models)
    p = ours.predict(test.prompts, test.tasks).p_success
    report = calibration_report(p, test.scores, test.models)
    for name in test.models:
        assert abs(report[name]["mean_p"] - report[name]["realised"]) < 0.04
        assert report[name]["ece"] < 0.08
    # within the test split, jobs given a higher p succeed more often
    j = 1
    low, high = p[:, j] < np.median(p[:, j]), p[:, j] >= np.median(p[:, j])
    assert test.scores[high, j].mean() > test.scores[low, j].mean() + 0.05
    q = eccos.predict(test.prompts).p_success
    assert brier_score(p, test.scores) < brier_score(q, test.scores)


def test_within_task_auc_ignores_what_the_task_alone_explains() -> None:
    tasks = ["easy"] * 4 + ["hard"] * 4
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=float)
    task_rate = np.array([0.75] * 4 + [0.25] * 4)         # knows the task, nothing inside it
    assert within_task_auc(task_rate, y, tasks) == 0.5
    inside = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.1, 0.3, 0.4])   # ranks every right answer first
    assert within_task_auc(inside, y, tasks) == 1.0
    assert np.isnan(within_task_auc(task_rate, np.ones(8), tasks))   # one class everywhere: undefined
