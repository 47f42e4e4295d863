"""Per-task success rates: the prior a predictor shrinks towards when jobs carry a task label.

A model's rate on a task is shrunk towards its overall rate with ``strength`` pseudo-outcomes
(a Beta prior), so a task seen a handful of times says little. On training rows the rate is
computed leave-one-out: a row's own outcome must not be part of the prior it is scored with.
Without labels (or for a task never seen) the prior is the model's overall rate.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_STRENGTH = 10.0


class TaskPrior:
    def __init__(self, strength: float = DEFAULT_STRENGTH) -> None:
        self.strength = strength
        self.base_ = np.zeros(0)
        self._sum: dict[str, np.ndarray] = {}
        self._count: dict[str, np.ndarray] = {}

    def fit(self, tasks: Sequence[str] | None, scores: np.ndarray) -> TaskPrior:
        observed = ~np.isnan(scores)
        with np.errstate(invalid="ignore"):
            base = np.nanmean(scores, axis=0)
        self.base_ = np.where(np.isnan(base), 0.5, base)
        self._sum, self._count = {}, {}
        if tasks is not None:
            for task in set(tasks):
                rows = np.array([t == task for t in tasks])
                self._sum[task] = np.nansum(scores[rows], axis=0)
                self._count[task] = observed[rows].sum(axis=0).astype(float)
        return self

    def _rate(self, total: np.ndarray, count: np.ndarray) -> np.ndarray:
        return (total + self.strength * self.base_) / (count + self.strength)

    def rates(self, tasks: Sequence[str] | None, n: int) -> np.ndarray:
        """(n, M) prior for new jobs."""
        if tasks is None:
            return np.tile(self.base_, (n, 1))
        zero = np.zeros_like(self.base_)
        return np.array([self._rate(self._sum.get(t, zero), self._count.get(t, zero)) for t in tasks])

    def leave_one_out(self, tasks: Sequence[str] | None, scores: np.ndarray) -> np.ndarray:
        """(N, M) prior for the training rows, each without its own outcome."""
        if tasks is None:
            return np.tile(self.base_, (scores.shape[0], 1))
        total = np.array([self._sum[t] for t in tasks]) - np.nan_to_num(scores)
        count = np.array([self._count[t] for t in tasks]) - (~np.isnan(scores))
        return self._rate(total, count)
