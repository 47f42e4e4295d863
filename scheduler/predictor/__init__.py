"""Predictors: per (job, model) p(success) and expected output tokens, behind one registry.

Typical use (the tick, replay)::

    predictor = make_predictor("switchyard").fit(prompts, scores, output_tokens, model_names)
    pred = predictor.predict(new_prompts)   # pred.p_success (N, M), pred.output_tokens (N, M) | None
    feats = predictor.featurize(prompts)    # once per job; then each tick: predictor.predict_features(feats)
"""
from scheduler.predictor import calibrated as _calibrated  # noqa: F401  (registers ours)
from scheduler.predictor import eccos as _eccos  # noqa: F401  (registers eccos-r)
from scheduler.predictor.base import (
    JobFeatures,
    NotFitted,
    Prediction,
    Predictor,
    PredictorError,
    UnknownPredictor,
    available_predictors,
    load_predictor,
    make_predictor,
    register,
)
from scheduler.predictor.calibration import brier_score, calibration_report, expected_calibration_error

__all__ = [
    "JobFeatures", "NotFitted", "Prediction", "Predictor", "PredictorError", "UnknownPredictor", "available_predictors",
    "brier_score", "calibration_report", "expected_calibration_error", "load_predictor", "make_predictor",
    "register",
]
