"""Calibration: make a promised success rate hold, and measure whether it does.

A predicted p is calibrated when, of the jobs given p = 0.8, 80% succeed. The optimizer's quality
row sums p, so a biased p breaks the promise directly. Calibrators here map a raw score to a
probability and are fitted on *out-of-fold* scores (the raw model never saw those rows), the
cross-validated scheme of Platt (1999) and Zadrozny & Elkan (2002).

Platt scaling on the logit is the default because it is strictly monotone: it keeps the ranking
of jobs that the optimizer exploits, where isotonic regression flattens runs into ties.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

CalibrationMethod = Literal["platt", "isotonic", "none"]
_EPS = 1e-4


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


def soft_labels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with a fractional score y become two weighted rows (y=1 weight y, y=0 weight 1-y)."""
    hard = (y == 0.0) | (y == 1.0)
    soft = ~hard
    xs = np.concatenate([x[hard], x[soft], x[soft]])
    ys = np.concatenate([y[hard], np.ones(soft.sum()), np.zeros(soft.sum())])
    ws = np.concatenate([np.ones(hard.sum()), y[soft], 1.0 - y[soft]])
    keep = ws > 0
    return xs[keep], ys[keep].astype(int), ws[keep]


class Calibrator:
    """One monotone map per model from raw score to probability."""

    def __init__(self, method: CalibrationMethod = "platt") -> None:
        self.method = method
        self._maps: list[tuple[str, IsotonicRegression | tuple[float, float] | None]] = []

    def fit(self, raw: np.ndarray, scores: np.ndarray) -> Calibrator:
        """``raw`` and ``scores`` are (N, M) out-of-fold scores and outcomes (nan = unobserved)."""
        self._maps = []
        for j in range(raw.shape[1]):
            seen = ~np.isnan(scores[:, j]) & ~np.isnan(raw[:, j])
            r, y = raw[seen, j], scores[seen, j]
            if self.method == "none" or seen.sum() < 10 or np.ptp(y) == 0:
                self._maps.append(("identity", None))
            elif self.method == "isotonic":
                iso = IsotonicRegression(y_min=_EPS, y_max=1 - _EPS, out_of_bounds="clip").fit(r, y)
                self._maps.append(("isotonic", iso))
            else:
                x, yy, w = soft_labels(logit(r)[:, None], y)
                lr = LogisticRegression(C=1e4, max_iter=1000).fit(x, yy, sample_weight=w)
                self._maps.append(("platt", (float(lr.coef_[0, 0]), float(lr.intercept_[0]))))
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        out = np.empty_like(raw, dtype=float)
        for j, (_kind, state) in enumerate(self._maps):
            if isinstance(state, IsotonicRegression):
                out[:, j] = state.predict(raw[:, j])
            elif isinstance(state, tuple):
                a, b = state
                out[:, j] = 1.0 / (1.0 + np.exp(-(a * logit(raw[:, j]) + b)))
            else:
                out[:, j] = raw[:, j]
        return np.clip(out, 0.0, 1.0)


def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error of the probability against the (possibly fractional) outcome."""
    seen = ~np.isnan(y)
    return float(np.mean((p[seen] - y[seen]) ** 2)) if seen.any() else float("nan")


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |mean p - mean outcome| over equal-width probability bins."""
    seen = ~np.isnan(y)
    p, y = p[seen], y[seen]
    if p.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(p[sel].mean() - y[sel].mean())
    return float(total / p.size)


def within_task_auc(p: np.ndarray, y: np.ndarray, tasks: list[str] | None) -> float:
    """ROC-AUC of ``p`` against success (score >= 0.5) inside each task, averaged weighted by the
    task's rows; tasks where every outcome is the same are skipped (nan if none is left). It says
    how well the predictor tells a model's right answers from its wrong ones *beyond* knowing the
    task: 0.5 is chance. Without tasks, the whole set is one task."""
    from sklearn.metrics import roc_auc_score

    seen = ~np.isnan(y)
    labels = np.asarray(tasks if tasks is not None else [""] * len(y), dtype=object)[seen]
    p, hit = p[seen], y[seen] >= 0.5
    total, weight = 0.0, 0
    for task in np.unique(labels):
        rows = labels == task
        if 0 < hit[rows].sum() < rows.sum():
            total += roc_auc_score(hit[rows], p[rows]) * int(rows.sum())
            weight += int(rows.sum())
    return total / weight if weight else float("nan")


def calibration_report(
    p: np.ndarray, scores: np.ndarray, model_names: list[str] | tuple[str, ...], bins: int = 10,
    tasks: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per model: Brier score, ECE, within-task ROC-AUC, mean predicted p, realised rate and
    number of outcomes."""
    report = {}
    for j, name in enumerate(model_names):
        y = scores[:, j]
        seen = ~np.isnan(y)
        report[name] = {
            "brier": brier_score(p[:, j], y),
            "ece": expected_calibration_error(p[:, j], y, bins),
            "auc_within_task": within_task_auc(p[:, j], y, tasks),
            "mean_p": float(p[seen, j].mean()) if seen.any() else float("nan"),
            "realised": float(y[seen].mean()) if seen.any() else float("nan"),
            "n": int(seen.sum()),
        }
    return report
