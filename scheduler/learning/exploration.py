"""Exploration under bandit feedback, and the promise check that keeps alpha honest.

Only the chosen model's outcome is ever observed, so a model the predictor never sends work to
never gets the labels that would show it is good. The first design (a PerLLM-style UCB bonus
added to p) did not work here, measured with ``switchyard replay --cold``: the optimizer
minimises cost, so a bonus only made *cheap* models look good enough for the quality row; the
dearest models (often the best ones) were never tried, and the bonus counted towards alpha, so
realised quality fell short of the promise.

What we do instead, per window:

* **Constraint-pruned, least-tried-first exploration.** A model is under-explored while it has
  fewer than ``target_labels`` labels (its confidence radius sqrt(ln N / n) is still wide). Up
  to ``budget_fraction`` of the window's jobs, drawn at random, are each *pinned* to the
  under-explored model with the fewest labels among the models that job may use (allow-list,
  live capacity, floor, cost cap, deadline: the hard constraints prune first). Price plays no
  part, so expensive models get labels too; the cost is bounded by the budget and ends once every
  model has its labels.
* **No optimism in the promise.** A pinned job counts in the quality row with its plain predicted
  p, so the optimizer makes up for an exploring job with the rest of the window.
* **Promise check.** A predictor fitted on bandit feedback is optimistic exactly where the
  optimizer picks (it saw a cheap model mostly where it looked good). Every label carries the p
  that was promised for it, so the recent gap mean(promised - realised) is measured from feedback
  and added to alpha as a margin.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NOT_PINNED = -1
# Fewer recent labels than this and the measured gap is mostly noise: no margin yet.
PROMISE_MIN_LABELS = 30


@dataclass(frozen=True)
class Feedback:
    """What finished jobs have taught so far, as the policy uses it."""
    label_counts: tuple[int, ...] = ()   # labels per fleet model (order of fleet.names); () = none yet
    promise_gap: float = 0.0             # recent mean(promised p - realised score), >= 0: added to alpha


@dataclass(frozen=True)
class Exploration:
    budget_fraction: float = 0.1   # most of a window's jobs that may be pinned to explore
    target_labels: int = 30        # a model with fewer labels than this is under-explored

    def pin(self, eligible: np.ndarray, label_counts: Sequence[int], rng: np.random.Generator,
            room: np.ndarray | None = None) -> np.ndarray:
        """Per job, the model index it must explore, or NOT_PINNED. ``eligible``: (N, M) bool;
        ``room``: jobs each model can still take this window (never pin more than that)."""
        n = eligible.shape[0]
        pinned = np.full(n, NOT_PINNED, dtype=np.int64)
        need = np.maximum(0, self.target_labels - np.asarray(label_counts, dtype=np.int64))
        if room is not None:
            need = np.minimum(need, np.maximum(0, np.asarray(room, dtype=np.int64)))
        budget = min(int(rng.binomial(n, self.budget_fraction)), int(need.sum()))
        if budget == 0:
            return pinned
        counts = np.asarray(label_counts, dtype=float).copy()
        for i in rng.permutation(n):
            candidates = np.flatnonzero(eligible[i] & (need > 0))
            if candidates.size == 0:
                continue
            fewest = candidates[counts[candidates] == counts[candidates].min()]
            j = int(rng.choice(fewest))
            pinned[i] = j
            need[j] -= 1
            counts[j] += 1   # spread this window's explorers over the under-explored models
            budget -= 1
            if budget == 0:
                break
        return pinned


def restrict_to_pinned(eligible: np.ndarray, pinned: np.ndarray) -> np.ndarray:
    """The eligibility mask with each pinned job allowed only its pinned model."""
    mask = eligible.copy()
    rows = np.flatnonzero(pinned != NOT_PINNED)
    mask[rows] = False
    mask[rows, pinned[rows]] = True
    return mask


def promise_gap(promised: Sequence[float], realised: Sequence[float]) -> float:
    """How much the predicted success of recently chosen models exceeded what they delivered
    (>= 0; 0 while fewer than PROMISE_MIN_LABELS labels exist)."""
    if len(promised) < PROMISE_MIN_LABELS:
        return 0.0
    return max(0.0, float(np.mean(np.asarray(promised, dtype=float) - np.asarray(realised, dtype=float))))
