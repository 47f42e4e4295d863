"""The two raw learners of the post-hoc estimator (scheduler/predictor/posthoc.py), fitted on its
query features per fold and on everything, then blended: gradient-boosted trees and a logistic
regression. Fractional scores become two weighted rows, as the calibrator does."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from scheduler.predictor.calibration import soft_labels


def _binary_rows(y: np.ndarray) -> np.ndarray:
    """Source row of each row of :func:`_binary`'s output."""
    xs, _, _ = soft_labels(np.arange(len(y), dtype=float)[:, None], y)
    return xs[:, 0].astype(np.int64)


def _binary(x: Any, y: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Fractional scores as two weighted rows (as the calibrator does); ``x`` dense or sparse."""
    _, ys, ws = soft_labels(np.arange(len(y), dtype=float)[:, None], y)
    return x[_binary_rows(y)], ys, ws


class _Component(ABC):
    """One raw learner on the query features: fitted per fold and on everything, then blended."""

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, models: np.ndarray, m: int, model_column: bool) -> None: ...

    @abstractmethod
    def predict(self, x: np.ndarray, models: np.ndarray) -> np.ndarray: ...


class _Trees(_Component):
    """Histogram gradient-boosted trees (the model index, when kept, as a categorical feature)."""

    def __init__(self, seed: int, max_iter: int = 200, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 40, l2_regularization: float = 1.0) -> None:
        self.seed = seed
        self.params = {"max_iter": max_iter, "learning_rate": learning_rate, "max_leaf_nodes": max_leaf_nodes,
                       "min_samples_leaf": min_samples_leaf, "l2_regularization": l2_regularization}
        self._gbm: HistGradientBoostingClassifier | None = None
        self._constant = 0.5

    def fit(self, x: np.ndarray, y: np.ndarray, models: np.ndarray, m: int, model_column: bool) -> None:
        xs, ys, ws = _binary(x, y)
        if np.ptp(ys) == 0:
            self._gbm, self._constant = None, float(ys[0])
            return
        cats = np.zeros(x.shape[1], dtype=bool)
        cats[-1] = model_column = model_column and m <= 250   # the trees' categorical limit
        self._gbm = HistGradientBoostingClassifier(categorical_features=cats if model_column else None,
                                                   early_stopping=False, random_state=self.seed, **self.params)
        self._gbm.fit(xs, ys, sample_weight=ws)

    def predict(self, x: np.ndarray, models: np.ndarray) -> np.ndarray:
        if self._gbm is None:
            return np.full(x.shape[0], self._constant)
        return np.asarray(self._gbm.predict_proba(x)[:, 1])


class _Logistic(_Component):
    """L2 logistic regression on the standardised features plus one-hot model intercepts."""

    def __init__(self, c: float = 1.0) -> None:
        self.c = c
        self._m = 0
        self._model_column = False
        self._scaler: StandardScaler | None = None
        self._lr: LogisticRegression | None = None
        self._constant = 0.5

    def _design(self, x: np.ndarray, models: np.ndarray) -> np.ndarray:
        dense = x[:, :-1] if self._model_column else x
        assert self._scaler is not None
        onehot = np.eye(self._m, dtype=np.float32)[models]
        return np.hstack([self._scaler.transform(dense), onehot])

    def fit(self, x: np.ndarray, y: np.ndarray, models: np.ndarray, m: int, model_column: bool) -> None:
        self._m, self._model_column = m, model_column
        self._scaler = StandardScaler().fit(x[:, :-1] if model_column else x)
        xs, ys, ws = _binary(self._design(x, models), y)
        if np.ptp(ys) == 0:
            self._lr, self._constant = None, float(ys[0])
            return
        self._lr = LogisticRegression(C=self.c, max_iter=2000).fit(xs, ys, sample_weight=ws)

    def predict(self, x: np.ndarray, models: np.ndarray) -> np.ndarray:
        if self._lr is None:
            return np.full(x.shape[0], self._constant)
        return np.asarray(self._lr.predict_proba(self._design(x, models))[:, 1])
