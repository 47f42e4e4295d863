"""The replay result: per policy, the quality and cost it reached at each alpha, and summaries.

``reach_best`` is the cheapest cost share (of the best single model's cost) at which a policy's
realised quality on the test split is at least the best single model's
(``reach_best_within_tolerance``: at least that minus ``ALPHA_TOLERANCE``, which is less at the
mercy of one or two test queries); ``alpha_met`` says whether realised quality reached alpha
within ``ALPHA_TOLERANCE``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ALPHA_TOLERANCE = 0.01


@dataclass(frozen=True)
class PolicyPoint:
    alpha: float | None
    quality: float
    cost_usd: float
    cost_share_of_best: float
    alpha_met: bool | None


@dataclass(frozen=True)
class BestSingle:
    model: str
    quality: float
    cost_usd: float


@dataclass
class ReplayReport:
    dataset: str
    n_train: int
    n_test: int
    best_single: BestSingle
    policies: dict[str, list[PolicyPoint]]
    reach_best: dict[str, float | None] = field(default_factory=dict)
    reach_best_within_tolerance: dict[str, float | None] = field(default_factory=dict)
    alpha_met_rate: dict[str, float | None] = field(default_factory=dict)
    area_under_curve: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def summarise(self, single_models: list[str], judged_alphas: Sequence[float] | None = None) -> None:
        """Fill reach_best, alpha_met_rate and area_under_curve from the points.

        Every policy's curve starts at the cheapest single model's point (any policy can route
        everything there), so the areas compare what each adds above that floor. Alpha-met is
        judged at ``judged_alphas`` (the sweep's grid: the same alphas for every policy, not the
        extra points a bisection added) or, if None, at every point's alpha.
        """
        best = self.best_single.quality
        floor = min((self.policies[m][0] for m in single_models), key=lambda p: p.cost_usd)
        for name, points in self.policies.items():
            self.reach_best[name] = reach_best(points, best)
            self.reach_best_within_tolerance[name] = reach_best(points, best - ALPHA_TOLERANCE)
            self.alpha_met_rate[name] = alpha_met_rate(points, best, judged_alphas)
            self.area_under_curve[name] = area_under_curve([*points, floor])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def make_point(alpha: float | None, quality: float, cost_usd: float, best_cost_usd: float) -> PolicyPoint:
    met = None if alpha is None else bool(quality >= alpha - ALPHA_TOLERANCE)
    share = cost_usd / best_cost_usd if best_cost_usd > 0 else float("inf")
    return PolicyPoint(alpha, float(quality), float(cost_usd), float(share), met)


def reach_best(points: list[PolicyPoint], best_quality: float) -> float | None:
    """Cheapest cost share among points whose quality reaches ``best_quality`` (None if none does)."""
    shares = [p.cost_share_of_best for p in points if p.quality >= best_quality - 1e-9]
    return min(shares) if shares else None


def alpha_met_rate(points: list[PolicyPoint], best_quality: float,
                   judged_alphas: Sequence[float] | None = None) -> float | None:
    """Share of the points with alpha <= ``best_quality`` (and in ``judged_alphas``, if given) whose
    realised quality met alpha."""
    allowed = None if judged_alphas is None else set(judged_alphas)
    judged = [p.alpha_met for p in points if p.alpha is not None and p.alpha <= best_quality + 1e-9
              and (allowed is None or p.alpha in allowed)]
    return sum(bool(m) for m in judged) / len(judged) if judged else None


def area_under_curve(points: list[PolicyPoint]) -> float:
    """Integral over cost share s in [0, 1] of the best quality the policy reached at cost <= s."""
    pts = sorted((min(p.cost_share_of_best, 1.0), p.quality) for p in points)
    area, best_q = 0.0, 0.0
    for i, (s, q) in enumerate(pts):
        best_q = max(best_q, q)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        area += best_q * max(nxt - s, 0.0)
    return float(area)
