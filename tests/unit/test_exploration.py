"""Exploration pins a budgeted share of a window to little-tried eligible models; the promise
check measures how far realised success fell short of the predicted p."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.learning.exploration import (
    NOT_PINNED,
    PROMISE_MIN_LABELS,
    Exploration,
    promise_gap,
    restrict_to_pinned,
)


def test_pins_go_to_the_fewest_labels_first_and_stop_at_the_target() -> None:
    eligible = np.ones((1000, 3), dtype=bool)
    pinned = Exploration(budget_fraction=0.2, target_labels=30).pin(eligible, [100, 0, 25], np.random.default_rng(0))
    counts = np.bincount(pinned[pinned != NOT_PINNED], minlength=3)
    assert counts.tolist() == [0, 30, 5]      # model 0 has its labels; the others are filled up to 30


def test_the_budget_bounds_the_share_of_jobs() -> None:
    eligible = np.ones((1000, 2), dtype=bool)
    pinned = Exploration(budget_fraction=0.1, target_labels=10_000).pin(eligible, [0, 0], np.random.default_rng(1))
    assert 60 < (pinned != NOT_PINNED).sum() < 140
    # spread over the under-explored models, not all on one
    assert abs(int((pinned == 0).sum()) - int((pinned == 1).sum())) <= 1


def test_constraints_prune_before_exploring() -> None:
    eligible = np.zeros((200, 3), dtype=bool)
    eligible[:, 0] = True
    eligible[:100, 2] = True                   # only the first half may use model 2
    pinned = Exploration(budget_fraction=1.0, target_labels=50).pin(eligible, [0, 0, 0], np.random.default_rng(2),
                                                                   room=np.array([5, 10, 10]))
    assert not (pinned == 1).any()             # model 1 is nobody's to use
    assert (np.flatnonzero(pinned == 2) < 100).all()
    assert (pinned == 0).sum() == 5 and (pinned == 2).sum() == 10   # never more than the room left
    mask = restrict_to_pinned(eligible, pinned)
    rows = np.flatnonzero(pinned != NOT_PINNED)
    assert (mask[rows].sum(axis=1) == 1).all() and mask[rows, pinned[rows]].all()
    free = np.flatnonzero(pinned == NOT_PINNED)
    assert np.array_equal(mask[free], eligible[free])


def test_nothing_to_explore_once_every_model_has_its_labels() -> None:
    pinned = Exploration(0.5, 30).pin(np.ones((50, 2), dtype=bool), [30, 31], np.random.default_rng(3))
    assert (pinned == NOT_PINNED).all()


def test_promise_gap_is_the_mean_shortfall_and_never_negative() -> None:
    n = PROMISE_MIN_LABELS
    assert promise_gap([0.9] * n, [1.0, 0.0] * (n // 2)) == pytest.approx(0.4)
    assert promise_gap([0.2] * n, [1.0] * n) == 0.0                  # under-promising asks for nothing
    assert promise_gap([0.9] * (n - 1), [0.0] * (n - 1)) == 0.0      # too few labels to trust yet
