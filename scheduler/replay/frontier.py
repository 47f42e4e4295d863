"""Where a policy's cost-quality frontier crosses a quality line, found by bisection on alpha.

The sweep evaluates each policy on a grid of alphas (step 0.005). Near the best model's quality
one grid step can move a policy's cost by several percent -- on RouteLLM MMLU the step from
alpha 0.795 to 0.800 took ours from 82.1% to 87.8% of gpt-4's cost for 0.004 of quality -- so
reading "the cheapest point that reaches the best model" off the grid overstates what the policy
needs by up to one step's cost. :func:`refine_crossing` bisects alpha between the cheapest grid
point that reaches the line and the grid point below it; every point it evaluates is a real
routing of the test split and joins the policy's curve. The same refinement is applied to every
alpha-driven policy, baselines and oracles included.
"""
from __future__ import annotations

from collections.abc import Callable

from scheduler.replay.report import ALPHA_TOLERANCE, PolicyPoint

DEFAULT_REFINE_STEPS = 6     # 0.005 / 2**6 ~ 0.0001 of alpha: below one query of MMLU's 4,297


def refine_crossing(evaluate: Callable[[float], PolicyPoint], points: list[PolicyPoint], line: float,
                    steps: int = DEFAULT_REFINE_STEPS) -> list[PolicyPoint]:
    """Bisect alpha where ``points`` (one policy's swept curve) first reach quality ``line``.

    Returns the newly evaluated points (none when no swept point reaches the line, or when the
    cheapest one that does has no lower alpha beside it to bracket the crossing).
    """
    swept = sorted(((p.alpha, p) for p in points if p.alpha is not None), key=lambda pair: pair[0])
    reaching = [(alpha, p) for alpha, p in swept if p.quality >= line - 1e-9]
    if not reaching or steps <= 0:
        return []
    hi = min(reaching, key=lambda pair: pair[1].cost_usd)[0]
    below = [alpha for alpha, _ in swept if alpha < hi]
    if not below:
        return []
    lo = below[-1]
    evaluated: list[PolicyPoint] = []
    for _ in range(steps):
        mid = round((lo + hi) / 2, 7)
        point = evaluate(mid)
        evaluated.append(point)
        if point.quality >= line - 1e-9:
            hi = mid
        else:
            lo = mid
    return evaluated


def refine_reach_best(evaluate: Callable[[float], PolicyPoint], points: list[PolicyPoint], best_quality: float,
                      steps: int = DEFAULT_REFINE_STEPS) -> list[PolicyPoint]:
    """The points to add so that ``reach_best`` and its within-tolerance variant are read at the
    bisected crossings (``best_quality`` and ``best_quality - ALPHA_TOLERANCE``), each once."""
    added: list[PolicyPoint] = []
    for line in (best_quality, best_quality - ALPHA_TOLERANCE):
        added += [p for p in refine_crossing(evaluate, points + added, line, steps) if p not in points + added]
    return added
