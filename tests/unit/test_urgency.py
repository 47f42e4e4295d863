"""The urgency order on plain values: deferral penalties, deadlines, and fair shares by weight."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.urgency import (
    DEADLINE_URGENCY_WINDOW_S, deadline_urgency, deferral_penalty_usd, fair_share_penalty_usd, fair_share_quotas,
    within_fair_share,
)


def test_older_jobs_weigh_more_and_a_near_deadline_outweighs_any_wait_short_of_a_day() -> None:
    no_deadline = np.full(3, np.inf)
    young, old, older = deferral_penalty_usd(np.array([0.0, 60.0, 600.0]), no_deadline)
    assert young < old < older
    [due] = deferral_penalty_usd(np.array([0.0]), np.array([0.0]))          # no slack left
    [day_old] = deferral_penalty_usd(np.array([24 * 60.0 - 1]), np.array([np.inf]))
    assert due > day_old


def test_deadline_urgency_rises_only_inside_its_window() -> None:
    slack = np.array([np.inf, 2 * DEADLINE_URGENCY_WINDOW_S, DEADLINE_URGENCY_WINDOW_S / 2, 0.0, -5.0])
    assert deadline_urgency(slack).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize(("demand", "weights", "capacity", "expected"), [
    ({"a": 20_000, "b": 1}, {"a": 1.0, "b": 1.0}, 128, {"a": 127, "b": 1}),     # b's one job gets in
    ({"a": 100, "b": 100}, {"a": 3.0, "b": 1.0}, 40, {"a": 30, "b": 10}),      # by weight
    ({"a": 5, "b": 100}, {"a": 1.0, "b": 1.0}, 40, {"a": 5, "b": 35}),         # what a leaves, b takes
    ({"a": 10, "b": 10}, {"a": 1.0, "b": 1.0}, 100, {"a": 10, "b": 10}),       # nobody gets more than asked
    ({"a": 10, "b": 10, "c": 10}, {"a": 1.0, "b": 1.0, "c": 1.0}, 2, {"a": 1, "b": 1, "c": 0}),
    ({"a": 10}, {"a": 1.0}, 0, {"a": 0}),
])
def test_fair_share_quotas(demand: dict[str, int], weights: dict[str, float], capacity: int,
                           expected: dict[str, int]) -> None:
    quotas = fair_share_quotas(demand, weights, capacity)
    assert quotas == expected
    assert sum(quotas.values()) == min(capacity, sum(demand.values()))


def test_a_tenant_inside_its_share_outranks_an_older_backlog() -> None:
    tenants = ["a"] * 6 + ["b"]
    penalty = np.array([600.0, 500.0, 400.0, 300.0, 200.0, 100.0, 1.0])    # b's job is the youngest
    eligible = np.ones(7, dtype=bool)
    inside = within_fair_share(tenants, {"a": 1.0, "b": 1.0}, eligible, penalty, capacity=3)
    assert inside.tolist() == [True, True, False, False, False, False, True]
    ranked = np.argsort(-fair_share_penalty_usd(penalty, inside))
    assert set(ranked[:3].tolist()) == {0, 1, 6}                # the three slots: a's two oldest and b's job
    assert ranked[:2].tolist() == [0, 1]                         # urgency order kept within a share


def test_one_tenant_keeps_the_plain_urgency_order() -> None:
    penalty = np.array([3.0, 2.0, 1.0])
    inside = within_fair_share(["a"] * 3, {"a": 1.0}, np.ones(3, dtype=bool), penalty, capacity=1)
    assert inside.all()
    assert fair_share_penalty_usd(penalty, inside).tolist() == penalty.tolist()
