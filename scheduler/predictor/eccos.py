"""``eccos-r``: the ECCOS retrieval predictor, reproduced faithfully as the baseline.

Mei et al. 2025 embed each query, take the k = 16 most cosine-similar training queries and
predict p(success) for each model as the plain mean of those neighbours' outcomes, and the output
length as the mean of their lengths. No prior, no distance weighting, no calibration -- which is
why its p over- or under-promises. The embedding here is the same LSA as ours (their sentence
encoder needs a download), so differences come from the method, not the text representation.
"""
from __future__ import annotations

import numpy as np

from scheduler.predictor.base import Predictor, register
from scheduler.predictor.features import TextFeaturizer
from scheduler.predictor.retrieval import EccosScorer


@register("eccos-r")
class EccosRetrievalPredictor(Predictor):
    def __init__(self, k: int = 16, dim: int = 128) -> None:
        super().__init__()
        self.k = k
        self.featurizer = TextFeaturizer(dim=dim)
        self._scores = EccosScorer(k)
        self._tokens: EccosScorer | None = None

    def _fit(self, prompts: list[str], tasks: list[str] | None, scores: np.ndarray,
             output_tokens: np.ndarray | None) -> None:
        # ECCOS-R ignores task labels: it only has the query embedding.
        emb = self.featurizer.fit_transform(prompts).embedding
        self._scores = EccosScorer(self.k).fit(emb, scores)
        self._tokens = EccosScorer(self.k).fit(emb, output_tokens) if output_tokens is not None else None

    def _featurize(self, prompts: list[str], tasks: list[str] | None) -> np.ndarray:
        return self.featurizer.transform(prompts).embedding

    def _predict_features(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        tokens = self._tokens.predict(emb) if self._tokens is not None else None
        return self._scores.predict(emb), tokens

    def params(self) -> dict[str, object]:
        return {"k": self.k, "dim": self.featurizer.dim}
