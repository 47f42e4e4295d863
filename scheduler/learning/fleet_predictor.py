"""The predictor as the tick sees it: one column per fleet model.

A fitted predictor knows the models it was trained on; a fleet model it has never seen gets its
fleet-file prior (``quality_prior``). A model it has seen n times gets its fitted p blended with
that prior, by n / (n + ``quality_prior_labels``): the posterior mean of a prior worth that many
outcomes. Without it a model with one lucky (or unlucky) label would be promised 1 (or 0) by the
next fit, and a cold start would route on noise (measured with ``switchyard replay --cold``:
docs/replay-online.md). With thousands of labels the blend changes p by well under 1%.
(Exploration, so that a model gets tried, is the policy's business: scheduler/learning/exploration.py.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.fleet import Fleet
from scheduler.predictor import Predictor


@dataclass(frozen=True)
class FleetPrediction:
    p_success: np.ndarray              # (N, M_fleet)
    output_tokens: np.ndarray | None   # (N, M_fleet), nan where unknown; None when nothing predicts lengths


class PredictionCache:
    """Per-job predictions of one predictor version, kept across ticks. A job's prompt never
    changes, so a job that waits through many ticks (capacity-bound backlogs) is featurised and
    scored once per version instead of every tick."""

    def __init__(self, max_jobs: int = 200_000) -> None:
        self.max_jobs = max_jobs
        self._version: str | None = None
        self._p: dict[str, np.ndarray] = {}
        self._tokens: dict[str, np.ndarray] = {}

    def missing(self, version: str | None, keys: Sequence[str]) -> list[int]:
        """Positions of ``keys`` not yet predicted by ``version`` (a new version starts afresh)."""
        if version != self._version or len(self._p) > self.max_jobs:
            self._version, self._p, self._tokens = version, {}, {}
        return [i for i, key in enumerate(keys) if key not in self._p]

    def put(self, keys: Sequence[str], prediction: FleetPrediction) -> None:
        m = prediction.p_success.shape[1]
        tokens = prediction.output_tokens if prediction.output_tokens is not None else np.full((len(keys), m), np.nan)
        for i, key in enumerate(keys):
            self._p[key], self._tokens[key] = prediction.p_success[i], tokens[i]

    def get(self, keys: Sequence[str], num_models: int) -> FleetPrediction:
        if not keys:
            return FleetPrediction(np.zeros((0, num_models)), None)
        tokens = np.stack([self._tokens[key] for key in keys])
        return FleetPrediction(np.stack([self._p[key] for key in keys]), None if np.isnan(tokens).all() else tokens)


class FleetPredictor:
    def __init__(self, fleet: Fleet, fitted: Predictor | None, version: str | None,
                 cache: PredictionCache | None = None) -> None:
        self.fleet = fleet
        self.fitted = fitted
        self.version = version
        self.cache = cache
        self._priors = np.array([spec.quality_prior for spec in fleet.models])
        self._prior_labels = np.array([spec.quality_prior_labels for spec in fleet.models])

    @property
    def name(self) -> str:
        return f"{self.fitted.name}@{self.version}" if self.fitted is not None else "fleet-prior"

    def unscored(self, keys: Sequence[str]) -> list[str]:
        """The keys this version has not scored yet (none without a cache or a fitted predictor:
        fleet priors cost nothing to compute)."""
        if self.cache is None or self.fitted is None:
            return []
        return [keys[i] for i in self.cache.missing(self.version, keys)]

    def predict(self, prompts: Sequence[str], keys: Sequence[str] | None = None,
                tasks: Sequence[str] | None = None) -> FleetPrediction:
        """p and output tokens per (prompt, fleet model); ``keys`` (job ids) let the cache skip
        jobs this version has already scored. ``tasks``: a category label per prompt, for a
        predictor fitted with them (``TrainingSet.tasks``). Production jobs carry none and the
        tick passes none; the replay does. Predictions with tasks bypass the cache, so that a key
        always maps to what the job's prompt alone predicts."""
        if keys is None or self.cache is None or tasks is not None:
            return self._predict(prompts, tasks)
        missing = self.cache.missing(self.version, keys)
        if missing:
            self.cache.put([keys[i] for i in missing], self._predict([prompts[i] for i in missing]))
        return self.cache.get(keys, len(self.fleet.models))

    def _predict(self, prompts: Sequence[str], tasks: Sequence[str] | None = None) -> FleetPrediction:
        n, m = len(prompts), len(self.fleet.models)
        p = np.tile(self._priors, (n, 1))
        tokens: np.ndarray | None = None
        if self.fitted is not None and n:
            prediction = self.fitted.predict(list(prompts), tasks=None if tasks is None else list(tasks))
            known = {name: k for k, name in enumerate(prediction.model_names)}
            labels = getattr(self.fitted, "label_counts", {})
            for j, name in enumerate(self.fleet.names):
                if name in known:
                    p[:, j] = _blend_with_prior(prediction.p_success[:, known[name]], labels.get(name),
                                                self._priors[j], self._prior_labels[j])
                    if prediction.output_tokens is not None:
                        tokens = np.full((n, m), np.nan) if tokens is None else tokens
                        tokens[:, j] = prediction.output_tokens[:, known[name]]
        return FleetPrediction(np.clip(p, 0.0, 1.0), tokens)


def _blend_with_prior(p_fitted: np.ndarray, n_labels: int | None, prior: float, prior_labels: float) -> np.ndarray:
    """The fitted p of a model seen ``n_labels`` times, pulled towards its prior as if the prior were
    ``prior_labels`` more outcomes (a predictor that does not say how many it saw is trusted)."""
    if n_labels is None or n_labels + prior_labels <= 0:
        return p_fitted
    weight = n_labels / (n_labels + prior_labels)
    return weight * p_fitted + (1.0 - weight) * prior
