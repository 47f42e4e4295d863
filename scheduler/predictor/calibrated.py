"""Our predictors: a raw scorer, a calibrator fitted on its out-of-fold scores, a length model.

- ``knn-beta``: distance-weighted neighbours with a Beta prior (:class:`BetaRetrievalScorer`).
- ``linear``: per-model ridge linear probability model on LSA + prompt statistics + the task
  prior (:class:`LinearScorer`), the "trained" predictor.
- ``switchyard`` (the default): both, blended per model with the weight that minimises the
  out-of-fold Brier score, then calibrated. Retrieval wins where near-duplicates of past queries
  exist, the linear model where only broad topic and shape carry signal; cross-validation on the
  training data decides, so nothing is tuned per dataset by hand.

Every hyperparameter is picked by cross-validation inside ``fit``; ``params()`` reports the picks.
"""
from __future__ import annotations

import abc

from typing import Any

import numpy as np

from scheduler.predictor.base import Predictor, register
from scheduler.predictor.calibration import CalibrationMethod, Calibrator
from scheduler.predictor.features import Features, make_featurizer
from scheduler.predictor.length import OutputLengthModel
from scheduler.predictor.linear import LinearScorer
from scheduler.predictor.retrieval import BetaRetrievalScorer
from scheduler.predictor.task_prior import TaskPrior

BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


class CalibratedPredictor(Predictor):
    """Shared machinery: featurise, fit raw scores with out-of-fold copies, calibrate, fit lengths."""

    #: the text featuriser (``features.make_featurizer``); subclasses registered as ``*-minilm`` use
    #: sentence embeddings, which need the optional ``embeddings`` extra
    default_featurizer = "tfidf"

    def __init__(self, dim: int = 128, calibration: CalibrationMethod = "platt", seed: int = 0,
                 featurizer: str | None = None) -> None:
        super().__init__()
        self.featurizer_kind = featurizer or self.default_featurizer
        self.featurizer = make_featurizer(self.featurizer_kind, dim=dim, seed=seed)
        self.calibrator = Calibrator(calibration)
        self.task_prior = TaskPrior()
        self.seed = seed
        self._length: OutputLengthModel | None = None

    @abc.abstractmethod
    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Fit the raw scorer; return its out-of-fold (N, M) scores on the training rows."""

    @abc.abstractmethod
    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        """The raw (N, M) scores of featurised jobs, before calibration."""

    def _fit(self, prompts: list[str], tasks: list[str] | None, scores: np.ndarray,
             output_tokens: np.ndarray | None) -> None:
        feats = self.featurizer.fit_transform(prompts)
        self.task_prior.fit(tasks, scores)
        oof = self._raw_fit(feats, self.task_prior.leave_one_out(tasks, scores), scores)
        self.calibrator.fit(oof, scores)
        self._length = OutputLengthModel().fit(feats.dense(), output_tokens) if output_tokens is not None else None

    def _featurize(self, prompts: list[str], tasks: list[str] | None) -> tuple[Features, np.ndarray]:
        return self.featurizer.transform(prompts), self.task_prior.rates(tasks, len(prompts))

    def _predict_features(self, data: tuple[Features, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        feats, prior = data
        tokens = self._length.predict(feats.dense()) if self._length is not None else None
        return self.calibrator.transform(self._raw_predict(feats, prior)), tokens

    def predict_uncalibrated(self, prompts: list[str], tasks: list[str] | None = None) -> np.ndarray:
        """The raw scorer's p before calibration (for calibration reports and tests)."""
        feats, prior = self._featurize(prompts, tasks)
        return np.clip(self._raw_predict(feats, prior), 0.0, 1.0)


def _linear_x(feats: Features, prior: np.ndarray) -> np.ndarray:
    return np.hstack([feats.dense(), prior])


@register("knn-beta")
class BetaRetrievalPredictor(CalibratedPredictor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retrieval = BetaRetrievalScorer()

    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.retrieval.fit(feats.embedding, scores, prior)
        assert self.retrieval.oof_ is not None
        return self.retrieval.oof_

    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        return self.retrieval.predict(feats.embedding, prior)

    def params(self) -> dict[str, Any]:
        r = self.retrieval
        return {"k": r.k, "temperature": r.temperature, "prior_strength": r.strength}


@register("linear")
class LinearPredictor(CalibratedPredictor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.linear = LinearScorer(seed=self.seed)

    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.linear.fit(_linear_x(feats, prior), scores)
        assert self.linear.oof_ is not None
        return self.linear.oof_

    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        return self.linear.predict(_linear_x(feats, prior))

    def params(self) -> dict[str, Any]:
        return {"ridge_alpha": dict(zip(self.model_names, self.linear.chosen_alpha_))}


@register("switchyard")
class SwitchyardPredictor(CalibratedPredictor):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retrieval = BetaRetrievalScorer()
        self.linear = LinearScorer(seed=self.seed)
        self.weights_ = np.zeros(0)   # per model: share of the retrieval score in the blend

    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.retrieval.fit(feats.embedding, scores, prior)
        self.linear.fit(_linear_x(feats, prior), scores)
        knn, lin = self.retrieval.oof_, self.linear.oof_
        assert knn is not None and lin is not None
        lin = np.where(np.isnan(lin), knn, lin)
        weights = []
        for j in range(scores.shape[1]):
            seen = ~np.isnan(scores[:, j])
            losses = [np.mean((w * knn[seen, j] + (1 - w) * lin[seen, j] - scores[seen, j]) ** 2)
                      for w in BLEND_GRID]
            weights.append(BLEND_GRID[int(np.argmin(losses))])
        self.weights_ = np.array(weights)
        return self.weights_[None, :] * knn + (1 - self.weights_[None, :]) * lin

    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        w = self.weights_[None, :]
        return w * self.retrieval.predict(feats.embedding, prior) + (1 - w) * self.linear.predict(
            _linear_x(feats, prior))

    def params(self) -> dict[str, Any]:
        r = self.retrieval
        return {
            "k": r.k, "temperature": r.temperature, "prior_strength": r.strength,
            "ridge_alpha": dict(zip(self.model_names, self.linear.chosen_alpha_)),
            "retrieval_weight": dict(zip(self.model_names, self.weights_.tolist())),
        }


# The same predictors on sentence embeddings (all-MiniLM-L6-v2, int8 ONNX; the ``embeddings``
# extra). Separate names so `switchyard replay --predictor switchyard-minilm` selects them and a
# saved predictor records which features it was fitted on.
@register("switchyard-minilm")
class SwitchyardMiniLMPredictor(SwitchyardPredictor):
    default_featurizer = "minilm"


@register("switchyard-hybrid")
class SwitchyardHybridPredictor(SwitchyardPredictor):
    default_featurizer = "minilm+lsa"


@register("linear-minilm")
class LinearMiniLMPredictor(LinearPredictor):
    default_featurizer = "minilm"


@register("knn-beta-minilm")
class BetaRetrievalMiniLMPredictor(BetaRetrievalPredictor):
    default_featurizer = "minilm"
