"""Text features for the predictors: TF-IDF + truncated SVD (LSA) embeddings and prompt statistics.

LSA is the default embedding because it needs no model download: the vocabulary and the
projection are learned from the training prompts alone. The embedding is unit-normalised so a dot
product is the cosine similarity the retrieval predictors use. A few length/number statistics ride
along for the trained predictors, since how long and how numeric a prompt is says something about
how hard it is that bag-of-words topics miss.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from scheduler.predictor.sparse import SparseText

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class Features:
    embedding: np.ndarray  # (N, D) float32, unit rows (cosine = dot product)
    stats: np.ndarray      # (N, S) float32, standardised with the training mean/std
    text: sp.csr_matrix | None = None   # (N, V) sparse word 1-2 gram TF-IDF, when asked for

    def dense(self) -> np.ndarray:
        """Embedding and statistics side by side, for linear models."""
        return np.hstack([self.embedding, self.stats])


def prompt_stats(prompts: Sequence[str]) -> np.ndarray:
    """(N, 7) raw statistics: log chars, log words, log lines, numbers, digits share, '?' and '%'."""
    # Raw counts per prompt in plain Python, logs once over the whole array (np.log1p per scalar
    # cost more than the counting).
    counts = np.empty((len(prompts), 7), dtype=np.float64)
    for i, text in enumerate(prompts):
        numbers = _NUMBER.findall(text)
        counts[i] = (len(text), len(text.split()), text.count("\n"), len(numbers),
                     sum(len(x) for x in numbers) / max(len(text), 1), text.count("?"),
                     text.count("%") + text.count("/"))
    logged = [0, 1, 2, 3, 5, 6]   # column 4, the digits' share of the characters, stays as it is
    counts[:, logged] = np.log1p(counts[:, logged])
    return counts.astype(np.float32)


class TextFeaturizer:
    """Fit on training prompts, then map any prompts to :class:`Features`."""

    def __init__(self, dim: int = 128, max_features: int = 50_000, stats_weight: float = 0.5,
                 max_chars: int = 2_000, seed: int = 0, sparse_text: bool = False) -> None:
        self.dim = dim
        self.sparse_text = sparse_text     # also keep the full n-gram TF-IDF (Features.text)
        self._sparse: SparseText | None = None
        self.max_features = max_features
        self.stats_weight = stats_weight   # stats are standardised, then scaled to sit beside unit rows
        self.max_chars = max_chars         # keep the tail: few-shot prefixes come first, the query last
        self.seed = seed
        self._tfidf: TfidfVectorizer | None = None
        self._svd: TruncatedSVD | None = None
        self._stats_mean = np.zeros(7, dtype=np.float32)
        self._stats_std = np.ones(7, dtype=np.float32)

    def _clip(self, prompts: Sequence[str]) -> list[str]:
        return [p[-self.max_chars:] for p in prompts]

    def fit(self, prompts: Sequence[str]) -> TextFeaturizer:
        texts = self._clip(prompts)
        min_df = 2 if len(texts) >= 50 else 1   # tiny samples (tests) keep every word
        self._tfidf = TfidfVectorizer(
            sublinear_tf=True, min_df=min_df, max_df=0.95 if len(texts) >= 50 else 1.0,
            ngram_range=(1, 1), max_features=self.max_features, dtype=np.float32,
        )
        try:
            x = self._tfidf.fit_transform(texts)
        except ValueError:  # empty vocabulary (e.g. every prompt is punctuation)
            self._tfidf = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), dtype=np.float32)
            x = self._tfidf.fit_transform([t or " " for t in texts])
        k = min(self.dim, x.shape[1] - 1, x.shape[0] - 1)
        self._svd = TruncatedSVD(n_components=k, random_state=self.seed) if k >= 2 else None
        if self._svd is not None:
            self._svd.fit(x)
        self._fit_side_features(texts)
        return self

    def _fit_side_features(self, texts: list[str]) -> None:
        """Fit what rides beside the embedding: the statistics' scaling and the sparse n-grams."""
        raw = prompt_stats(texts)
        self._stats_mean = raw.mean(axis=0)
        self._stats_std = np.where(raw.std(axis=0) > 1e-6, raw.std(axis=0), 1.0).astype(np.float32)
        self._sparse = SparseText(max_chars=self.max_chars).fit(texts) if self.sparse_text else None

    def _with_side_features(self, embedding: np.ndarray, texts: list[str]) -> Features:
        """``embedding`` with the standardised statistics (and the sparse n-grams, if kept)."""
        stats = (prompt_stats(texts) - self._stats_mean) / self._stats_std * self.stats_weight
        text = self._sparse.transform(texts) if self._sparse is not None else None
        return Features(embedding=embedding, stats=stats.astype(np.float32), text=text)

    def transform(self, prompts: Sequence[str]) -> Features:
        if self._tfidf is None:
            raise RuntimeError("TextFeaturizer.transform before fit")
        texts = self._clip(prompts)
        x = self._tfidf.transform(texts)
        emb = self._svd.transform(x) if self._svd is not None else x.toarray()
        emb = np.asarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb /= np.where(norms > 0, norms, 1.0)
        return self._with_side_features(emb, texts)

    def fit_transform(self, prompts: Sequence[str]) -> Features:
        return self.fit(prompts).transform(prompts)
