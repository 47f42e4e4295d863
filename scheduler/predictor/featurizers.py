"""The featuriser registry: a featuriser by name, for the predictors (calibrated.py).

Its own module so that the TF-IDF featuriser (features.py) and the embedding featurisers
(embeddings.py, built on it) import one way: both are imported here, neither imports this.
"""
from __future__ import annotations

from scheduler.predictor.embeddings import EmbeddingFeaturizer, HybridFeaturizer
from scheduler.predictor.features import TextFeaturizer

FEATURIZERS = ("tfidf", "minilm", "minilm+lsa")


def make_featurizer(kind: str = "tfidf", dim: int = 128, seed: int = 0, sparse_text: bool = False) -> TextFeaturizer:
    """The featuriser named ``kind``: ``tfidf`` (TF-IDF/LSA, the default, no extra needed),
    ``minilm`` (sentence embeddings) or ``minilm+lsa`` (both, concatenated); the last two need the
    ``embeddings`` extra, which embeddings.py imports only when it loads the model. ``sparse_text``
    also keeps the full word 1-2 gram TF-IDF (:attr:`Features.text`) for the sparse logistic scorer."""
    if kind == "tfidf":
        return TextFeaturizer(dim=dim, seed=seed, sparse_text=sparse_text)
    if kind in ("minilm", "minilm+lsa"):
        if kind == "minilm":
            return EmbeddingFeaturizer(seed=seed, sparse_text=sparse_text)
        return HybridFeaturizer(dim=dim, seed=seed, sparse_text=sparse_text)
    raise ValueError(f"unknown featuriser {kind!r}; choose one of {FEATURIZERS}")
