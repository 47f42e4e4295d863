"""Sparse scorer: L2 logistic regression per model on the full TF-IDF vocabulary (no LSA).

LSA compresses the prompt to 128 topic directions, which keeps *what a query is about* and loses
most of *what exactly it asks* -- the words and bigrams (numbers, operators, code tokens,
answer-option shapes) that say which query inside a task a cheap model gets right. This scorer
keeps them: word 1-2 grams (TF-IDF, sublinear tf) feed one
L2-regularised logistic regression per model, with the prompt statistics beside them and the
task prior's logit as a fixed *offset* (so the model learns deviations from the job's task rate,
not the rate itself; the Platt calibrator afterwards rescales the whole logit).

The loss is the cross-entropy against the score itself, so fractional scores (F1, coverage) are
used as they are. The penalty is chosen per model by K-fold (default 3) cross-validated Brier
score over a fixed grid (warm-started from the strongest penalty down), and the out-of-fold scores at the chosen penalty are kept in ``oof_`` for the blend
and the calibrator, like :class:`scheduler.predictor.linear.LinearScorer`. Scoring is one sparse
matrix product: cheap enough for every tick.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import KFold

from scheduler.predictor.calibration import logit

#: penalty on the mean log-loss: lam * |w|^2 / 2 (lam = 1 / (C * n) in sklearn's terms)
LAMBDA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class SparseText:
    """Word 1-2 gram TF-IDF of the prompt's tail, as a sparse matrix with unit rows.

    Character 2-5 grams were tried beside the words: the same replay results on all four public
    sets (reach-best within 1.5 points either way) at ~7x the featurising time, so words only."""

    def __init__(self, max_chars: int = 2_000, max_word_features: int = 100_000) -> None:
        self.max_chars = max_chars
        self.max_word_features = max_word_features
        self._vectorizer: TfidfVectorizer | None = None   # None: no vocabulary (see fit)

    def _clip(self, prompts: Sequence[str]) -> list[str]:
        return [p[-self.max_chars:] or " " for p in prompts]

    def fit(self, prompts: Sequence[str]) -> SparseText:
        texts = self._clip(prompts)
        few = len(texts) < 50
        vec = TfidfVectorizer(sublinear_tf=True, min_df=1 if few else 2, max_df=1.0 if few else 0.95,
                              ngram_range=(1, 2), max_features=self.max_word_features, dtype=np.float32)
        try:
            vec.fit(texts)
        except ValueError:  # empty vocabulary (e.g. only punctuation, or too few prompts)
            self._vectorizer = None
            return self
        vec.stop_words_ = None   # the dropped terms: only introspection needs them; keeps pickles small
        self._vectorizer = vec
        return self

    def transform(self, prompts: Sequence[str]) -> sp.csr_matrix:
        """(N, vocabulary) with unit rows; (N, 0) when fit found no vocabulary."""
        texts = self._clip(prompts)
        if self._vectorizer is None:
            return sp.csr_matrix((len(texts), 0), dtype=np.float32)
        return sp.csr_matrix(self._vectorizer.transform(texts), dtype=np.float32)


def _fit_logistic(x: sp.csr_matrix, y: np.ndarray, offset: np.ndarray, lam: float,
                  init: np.ndarray | None = None) -> np.ndarray:
    """Weights (d + 1, last = intercept) minimising mean cross-entropy + lam/2 |w[:d]|^2."""
    n, d = x.shape
    xt = x.T.tocsr()

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w[:d] + w[d] + offset
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * lam * float(np.sum(w[:d] ** 2))
        r = (_sigmoid(z) - y) / n
        grad = np.empty(d + 1)
        grad[:d] = xt @ r + lam * w[:d]
        grad[d] = r.sum()
        return loss, grad

    w0 = np.zeros(d + 1) if init is None else init
    res = minimize(loss_grad, w0, jac=True, method="L-BFGS-B", options={"maxiter": 200, "gtol": 1e-5})
    return np.asarray(res.x)


class SparseLogisticScorer:
    """Per model: L2 logistic regression on [sparse text | dense extras | logit(task prior)]."""

    def __init__(self, folds: int = 3, seed: int = 0, lambdas: Sequence[float] = LAMBDA_GRID) -> None:
        self.folds = folds
        self.seed = seed
        self.lambdas = tuple(lambdas)
        self.chosen_lambda_: list[float] = []
        self.oof_: np.ndarray | None = None
        self._coef = np.zeros((0, 0))
        self._intercept = np.zeros(0)
        self._use_prior = np.zeros(0, dtype=bool)

    @staticmethod
    def design(text: sp.csr_matrix, dense: np.ndarray) -> sp.csr_matrix:
        """The sparse text with the dense extras beside it (the prior enters as an offset, not a column)."""
        return sp.hstack([text, sp.csr_matrix(dense.astype(np.float32))], format="csr")

    def fit(self, text: sp.csr_matrix, dense: np.ndarray, prior: np.ndarray, values: np.ndarray
            ) -> SparseLogisticScorer:
        """``prior`` (N, M): each row's (leave-one-out) task prior; ``values`` (N, M), nan = unobserved."""
        n, m = values.shape
        x = self.design(text, dense)
        offset_all = logit(prior)
        folds = min(self.folds, max(2, n // 10))
        splits = list(KFold(folds, shuffle=True, random_state=self.seed).split(np.arange(n)))
        d = x.shape[1]
        self.oof_ = np.full((n, m), np.nan)
        self._coef = np.zeros((m, d))
        self._intercept = np.zeros(m)
        self._use_prior = np.ones(m, dtype=bool)
        self.chosen_lambda_ = []
        for j in range(m):
            seen = ~np.isnan(values[:, j])
            ys = values[seen, j]
            if seen.sum() < 10 or np.ptp(ys) == 0:
                rate = float(ys.mean()) if seen.any() else 0.5
                self._intercept[j] = float(logit(np.array([rate]))[0])
                self._use_prior[j] = False
                self.oof_[seen, j] = rate
                self.chosen_lambda_.append(float("nan"))
                continue
            off = offset_all[:, j]
            # all lambdas per fold, largest penalty first with warm starts
            fold_pred = {lam: np.full(n, np.nan) for lam in self.lambdas}
            for tr_idx, te_idx in splits:
                tr, te = tr_idx[seen[tr_idx]], te_idx[seen[te_idx]]
                if tr.size < 2 or te.size == 0:
                    continue
                w = None
                for lam in sorted(self.lambdas, reverse=True):
                    w = _fit_logistic(x[tr], values[tr, j], off[tr], lam, w)
                    fold_pred[lam][te] = _sigmoid(x[te] @ w[:d] + w[d] + off[te])
            losses = {lam: float(np.nanmean((fold_pred[lam][seen] - ys) ** 2)) for lam in self.lambdas}
            lam = min(self.lambdas, key=lambda k: (losses[k], -k))
            self.chosen_lambda_.append(lam)
            self.oof_[:, j] = fold_pred[lam]
            self.oof_[~seen, j] = np.nan
            w = _fit_logistic(x[seen], ys, off[seen], lam)
            self._coef[j], self._intercept[j] = w[:d], w[d]
        return self

    def predict(self, text: sp.csr_matrix, dense: np.ndarray, prior: np.ndarray) -> np.ndarray:
        x = self.design(text, dense)
        z = np.asarray(x @ self._coef.T) + self._intercept[None, :] + logit(prior) * self._use_prior[None, :]
        return _sigmoid(z)


def _fit_shared_logistic(x: sp.csr_matrix, y: np.ndarray, seen: np.ndarray, offset: np.ndarray, lam: float,
                         init: np.ndarray | None = None) -> np.ndarray:
    """One text direction w shared by all models, one intercept per model:
    z_ij = x_i . w + b_j + offset_ij; minimises the mean cross-entropy over observed (i, j) pairs
    + lam/2 |w|^2. Returns (d + M,): w, then b."""
    d = x.shape[1]
    m = y.shape[1]
    xt = x.T.tocsr()
    y0 = np.where(seen, y, 0.0)
    count = max(int(seen.sum()), 1)

    def loss_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        z = (x @ v[:d])[:, None] + v[d:][None, :] + offset
        loss = float(np.sum(seen * (np.logaddexp(0.0, z) - y0 * z))) / count + 0.5 * lam * float(v[:d] @ v[:d])
        r = seen * (_sigmoid(z) - y0) / count
        grad = np.empty(d + m)
        grad[:d] = xt @ r.sum(axis=1) + lam * v[:d]
        grad[d:] = r.sum(axis=0)
        return loss, grad

    v0 = np.zeros(d + m) if init is None else init
    res = minimize(loss_grad, v0, jac=True, method="L-BFGS-B", options={"maxiter": 200, "gtol": 1e-5})
    return np.asarray(res.x)


class SharedDifficultyScorer:
    """How hard a query is for *every* model: one logistic text direction fitted on all models'
    outcomes at once (per-model intercepts, the task prior's logit as offset).

    With M models each query gives up to M labels for the one direction, so it is estimated with
    far less noise than M separate models; what it cannot express (a query easy for one model and
    hard for another) the per-model :class:`SparseLogisticScorer` and the blend keep. Penalty by
    K-fold cross-validated Brier; out-of-fold scores in ``oof_``.
    """

    def __init__(self, folds: int = 3, seed: int = 0, lambdas: Sequence[float] = LAMBDA_GRID) -> None:
        self.folds = folds
        self.seed = seed
        self.lambdas = tuple(lambdas)
        self.chosen_lambda_ = float("nan")
        self.oof_: np.ndarray | None = None
        self._w = np.zeros(0)
        self._b = np.zeros(0)

    def fit(self, text: sp.csr_matrix, dense: np.ndarray, prior: np.ndarray, values: np.ndarray
            ) -> SharedDifficultyScorer:
        n, m = values.shape
        x = SparseLogisticScorer.design(text, dense)
        d = x.shape[1]
        offset = logit(prior)
        seen = ~np.isnan(values)
        folds = min(self.folds, max(2, n // 10))
        splits = list(KFold(folds, shuffle=True, random_state=self.seed).split(np.arange(n)))
        fold_pred = {lam: np.full((n, m), np.nan) for lam in self.lambdas}
        for tr, te in splits:
            v = None
            for lam in sorted(self.lambdas, reverse=True):
                v = _fit_shared_logistic(x[tr], values[tr], seen[tr], offset[tr], lam, v)
                fold_pred[lam][te] = _sigmoid((x[te] @ v[:d])[:, None] + v[d:][None, :] + offset[te])
        losses = {lam: float(np.mean((fold_pred[lam][seen] - values[seen]) ** 2)) for lam in self.lambdas}
        self.chosen_lambda_ = min(self.lambdas, key=lambda k: (losses[k], -k))
        self.oof_ = np.where(seen, fold_pred[self.chosen_lambda_], np.nan)
        v = _fit_shared_logistic(x, values, seen, offset, self.chosen_lambda_)
        self._w, self._b = v[:d], v[d:]
        return self

    def predict(self, text: sp.csr_matrix, dense: np.ndarray, prior: np.ndarray) -> np.ndarray:
        x = SparseLogisticScorer.design(text, dense)
        return _sigmoid(np.asarray(x @ self._w)[:, None] + self._b[None, :] + logit(prior))
