"""Our predictors: a raw scorer, a calibrator fitted on its out-of-fold scores, a length model.

- ``knn-beta``: distance-weighted neighbours with a Beta prior (:class:`BetaRetrievalScorer`).
- ``linear``: per-model ridge linear probability model on LSA + prompt statistics + the task
  prior (:class:`LinearScorer`), the "trained" predictor.
- ``logistic``: per-model L2 logistic regression on the full word 1-2 gram TF-IDF
  (:class:`SparseLogisticScorer`), the task prior's logit as offset.
- ``switchyard`` (the default): retrieval, ridge, the sparse logistic models and a logistic
  "difficulty" direction shared by all models (:class:`SharedDifficultyScorer`), blended per
  model with the simplex weights that minimise the out-of-fold Brier score, then calibrated.
  Retrieval wins where near-duplicates of past queries exist, the LSA ridge where only broad
  topic and shape carry signal, the n-gram models where single words or symbols do;
  cross-validation on the training data decides, so nothing is tuned per dataset by hand.
- ``switchyard-lsa``: the previous default (retrieval + ridge on LSA only), for comparison.

Every hyperparameter is picked by cross-validation inside ``fit``; ``params()`` reports the picks.
"""
from __future__ import annotations

import abc
import itertools
from typing import Any

import numpy as np

from scheduler.predictor.base import Predictor, register
from scheduler.predictor.calibration import CalibrationMethod, Calibrator
from scheduler.predictor.features import Features
from scheduler.predictor.featurizers import make_featurizer
from scheduler.predictor.length import OutputLengthModel
from scheduler.predictor.linear import LinearScorer
from scheduler.predictor.retrieval import BetaRetrievalScorer
from scheduler.predictor.sparse import SharedDifficultyScorer, SparseLogisticScorer
from scheduler.predictor.task_prior import TaskPrior

BLEND_STEP = 0.1


class CalibratedPredictor(Predictor):
    """Shared machinery: featurise, fit raw scores with out-of-fold copies, calibrate, fit lengths."""

    #: the text featuriser (``featurizers.make_featurizer``); subclasses registered as ``*-minilm`` use
    #: sentence embeddings, which need the optional ``embeddings`` extra
    default_featurizer = "tfidf"
    #: whether the featuriser also keeps the full n-gram TF-IDF for :class:`SparseLogisticScorer`
    uses_sparse_text = False

    def __init__(self, dim: int = 128, calibration: CalibrationMethod = "platt", seed: int = 0,
                 featurizer: str | None = None) -> None:
        super().__init__()
        self.featurizer_kind = featurizer or self.default_featurizer
        self.featurizer = make_featurizer(self.featurizer_kind, dim=dim, seed=seed,
                                          sparse_text=self.uses_sparse_text)
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


@register("logistic")
class SparseLogisticPredictor(CalibratedPredictor):
    uses_sparse_text = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logistic = SparseLogisticScorer(seed=self.seed)

    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        assert feats.text is not None
        self.logistic.fit(feats.text, feats.stats, prior, scores)
        assert self.logistic.oof_ is not None
        return self.logistic.oof_

    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        assert feats.text is not None
        return self.logistic.predict(feats.text, feats.stats, prior)

    def params(self) -> dict[str, Any]:
        return {"logistic_lambda": dict(zip(self.model_names, self.logistic.chosen_lambda_))}


def simplex_grid(components: int, step: float = BLEND_STEP) -> np.ndarray:
    """All weight vectors on the simplex with entries in multiples of ``step`` (rows sum to 1)."""
    units = int(round(1.0 / step))
    rows = [c for c in itertools.product(range(units + 1), repeat=components) if sum(c) == units]
    return np.array(rows, dtype=float) / units


def blend_weights(oof: np.ndarray, scores: np.ndarray, step: float = BLEND_STEP) -> np.ndarray:
    """(M, C) per model: the simplex weights of the C components with the least out-of-fold Brier.

    ``oof`` is (C, N, M); ties go to the first grid point (the first component's side)."""
    grid = simplex_grid(oof.shape[0], step)
    weights = np.zeros((scores.shape[1], oof.shape[0]))
    for j in range(scores.shape[1]):
        seen = ~np.isnan(scores[:, j])
        blended = grid @ oof[:, seen, j]                       # (G, n_seen)
        losses = np.mean((blended - scores[seen, j][None, :]) ** 2, axis=1)
        weights[j] = grid[int(np.argmin(losses))]
    return weights


@register("switchyard")
class SwitchyardPredictor(CalibratedPredictor):
    """Several raw scorers blended per model with out-of-fold-Brier-optimal simplex weights.

    Components: ``retrieval`` (:class:`BetaRetrievalScorer` on the embedding), ``ridge``
    (:class:`LinearScorer` on embedding + statistics + prior) and, when the features carry the
    sparse n-gram TF-IDF, ``logistic`` (:class:`SparseLogisticScorer`, one per model) and
    ``shared`` (:class:`SharedDifficultyScorer`, one direction for all models).
    """

    uses_sparse_text = True
    components: tuple[str, ...] = ("retrieval", "ridge", "logistic", "shared")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retrieval = BetaRetrievalScorer()
        self.linear = LinearScorer(seed=self.seed)
        self.logistic: SparseLogisticScorer | None = None
        self.shared: SharedDifficultyScorer | None = None
        self.used_: tuple[str, ...] = ()
        self.weights_ = np.zeros((0, 0))   # (M, len(used_))

    def _raw_fit(self, feats: Features, prior: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.retrieval.fit(feats.embedding, scores, prior)
        knn = self.retrieval.oof_
        assert knn is not None
        parts: dict[str, np.ndarray] = {"retrieval": knn}
        if "ridge" in self.components:
            self.linear.fit(_linear_x(feats, prior), scores)
            assert self.linear.oof_ is not None
            parts["ridge"] = self.linear.oof_
        has_text = feats.text is not None and feats.text.shape[1] > 0
        self.logistic = self.shared = None
        if has_text and "logistic" in self.components:
            assert feats.text is not None
            self.logistic = SparseLogisticScorer(seed=self.seed).fit(feats.text, feats.stats, prior, scores)
            assert self.logistic.oof_ is not None
            parts["logistic"] = self.logistic.oof_
        if has_text and "shared" in self.components and scores.shape[1] > 1:
            assert feats.text is not None
            self.shared = SharedDifficultyScorer(seed=self.seed).fit(feats.text, feats.stats, prior, scores)
            assert self.shared.oof_ is not None
            parts["shared"] = self.shared.oof_
        self.used_ = tuple(parts)
        oof = np.stack([np.where(np.isnan(v), knn, v) for v in parts.values()])
        self.weights_ = blend_weights(oof, scores)
        return np.einsum("cnm,mc->nm", oof, self.weights_)

    def _raw_predict(self, feats: Features, prior: np.ndarray) -> np.ndarray:
        out = np.zeros((feats.embedding.shape[0], self.weights_.shape[0]))
        for c, name in enumerate(self.used_):
            w = self.weights_[:, c]
            if not w.any():
                continue
            if name == "retrieval":
                raw = self.retrieval.predict(feats.embedding, prior)
            elif name == "ridge":
                raw = self.linear.predict(_linear_x(feats, prior))
            else:
                scorer = self.logistic if name == "logistic" else self.shared
                assert scorer is not None and feats.text is not None
                raw = scorer.predict(feats.text, feats.stats, prior)
            out += w[None, :] * raw
        return out

    def params(self) -> dict[str, Any]:
        r = self.retrieval
        out: dict[str, Any] = {"k": r.k, "temperature": r.temperature, "prior_strength": r.strength}
        if "ridge" in self.used_:
            out["ridge_alpha"] = dict(zip(self.model_names, self.linear.chosen_alpha_))
        if self.logistic is not None:
            out["logistic_lambda"] = dict(zip(self.model_names, self.logistic.chosen_lambda_))
        if self.shared is not None:
            out["shared_lambda"] = self.shared.chosen_lambda_
        out["blend_weights"] = {
            name: dict(zip(self.used_, [round(float(w), 2) for w in self.weights_[j]]))
            for j, name in enumerate(self.model_names)
        }
        return out


@register("switchyard-lsa")
class SwitchyardLSAPredictor(SwitchyardPredictor):
    """The previous default: retrieval + ridge on LSA only (no sparse n-gram models)."""

    uses_sparse_text = False
    components = ("retrieval", "ridge")


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
