"""Trained scorer: a ridge-regularised linear probability model per model on the text features.

Why ridge and not logistic regression: with the penalty picked by exact leave-one-out (RidgeCV's
generalised cross-validation) it fits every model in milliseconds, handles fractional scores
(F1, coverage) as plain targets, and the Platt calibrator that follows turns its scores into
probabilities anyway. Out-of-fold scores (K-fold at the chosen penalty) are kept in ``oof_`` so
the calibrator and the blend are fitted on rows the model never saw.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold

ALPHA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class LinearScorer:
    def __init__(self, folds: int = 5, seed: int = 0) -> None:
        self.folds = folds
        self.seed = seed
        self.chosen_alpha_: list[float] = []
        self.oof_: np.ndarray | None = None
        self._coef = np.zeros((0, 0))
        self._intercept = np.zeros(0)

    def fit(self, x: np.ndarray, values: np.ndarray) -> LinearScorer:
        n, m = values.shape
        folds = min(self.folds, max(2, n // 10))
        splits = list(KFold(folds, shuffle=True, random_state=self.seed).split(x))
        self.oof_ = np.full((n, m), np.nan)
        self._coef = np.zeros((m, x.shape[1]))
        self._intercept = np.zeros(m)
        self.chosen_alpha_ = []
        for j in range(m):
            seen = ~np.isnan(values[:, j])
            xs, ys = x[seen], values[seen, j]
            if seen.sum() < 10 or np.ptp(ys) == 0:
                self._intercept[j] = float(ys.mean())
                self.oof_[seen, j] = float(ys.mean())
                self.chosen_alpha_.append(float("nan"))
                continue
            alpha = float(RidgeCV(alphas=ALPHA_GRID).fit(xs, ys).alpha_)
            self.chosen_alpha_.append(alpha)
            for train_idx, test_idx in splits:
                tr = train_idx[seen[train_idx]]
                te = test_idx[seen[test_idx]]
                if tr.size and te.size:
                    self.oof_[te, j] = Ridge(alpha=alpha).fit(x[tr], values[tr, j]).predict(x[te])
            final = Ridge(alpha=alpha).fit(xs, ys)
            self._coef[j], self._intercept[j] = final.coef_, final.intercept_
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self._coef.T + self._intercept[None, :]
