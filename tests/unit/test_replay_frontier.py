"""Bisection of a policy's frontier where it crosses a quality line (scheduler.replay.frontier)."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.replay.frontier import refine_crossing
from scheduler.replay.report import PolicyPoint, make_point, reach_best

QUERIES = 1000   # quality moves in steps of one query, as on a real test split


def staircase_policy(alpha: float) -> PolicyPoint:
    """A policy whose realised quality tracks alpha to one query and whose cost rises steeply with it."""
    quality = np.floor(alpha * QUERIES) / QUERIES
    cost = 10.0 * alpha ** 4
    return make_point(alpha, quality, cost, best_cost_usd=10.0)


GRID = [round(a, 3) for a in np.arange(0.70, 0.901, 0.05)]


def test_bisection_finds_the_crossing_between_grid_points() -> None:
    swept = [staircase_policy(a) for a in GRID]
    line = 0.8123
    on_grid = reach_best(swept, line)
    assert on_grid == pytest.approx(staircase_policy(0.85).cost_share_of_best)   # the grid can only say 0.85

    refined = refine_crossing(staircase_policy, swept, line, steps=10)
    assert len(refined) == 10
    assert all(0.80 < p.alpha < 0.85 for p in refined)          # only between the bracketing grid points
    cheapest = min((p for p in swept + refined if p.quality >= line), key=lambda p: p.cost_usd)
    first_alpha_reaching = 0.813          # floor(alpha * 1000) / 1000 >= 0.8123
    assert first_alpha_reaching <= cheapest.alpha <= first_alpha_reaching + 0.05 / 2 ** 10
    assert reach_best(swept + refined, line) == cheapest.cost_share_of_best < on_grid
    # every added point is a real evaluation: quality is what the policy gave at that alpha
    for p in refined:
        assert p == staircase_policy(p.alpha)


def test_nothing_to_refine() -> None:
    swept = [staircase_policy(a) for a in GRID]
    assert refine_crossing(staircase_policy, swept, line=0.95) == []            # never reached
    assert refine_crossing(staircase_policy, swept, line=0.60) == []            # reached at the lowest alpha
    assert refine_crossing(staircase_policy, swept, line=0.8123, steps=0) == []
    assert refine_crossing(staircase_policy, [make_point(None, 0.9, 1.0, 10.0)], line=0.8) == []


def test_a_noisy_policy_still_only_adds_points_it_evaluated() -> None:
    """Realised quality need not be monotone in alpha; bisection then finds *a* crossing, never a fake one."""
    rng = np.random.default_rng(0)
    noise = {}

    def noisy(alpha: float) -> PolicyPoint:
        noise.setdefault(alpha, rng.normal(0, 0.01))
        return make_point(alpha, alpha + noise[alpha], 10.0 * alpha ** 4, 10.0)

    swept = [noisy(a) for a in GRID]
    refined = refine_crossing(noisy, swept, line=0.82, steps=8)
    assert {p.alpha for p in refined} <= set(noise)
    assert all(p.quality == pytest.approx(p.alpha + noise[p.alpha]) for p in refined)
