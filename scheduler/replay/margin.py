"""The safety margin that turns "mean predicted success >= alpha" into a promise that holds.

Two effects make realised quality fall short of the predicted mean the optimizer enforces:

1. *Selection bias* (the optimizer's curse): the optimizer favours a cheap model exactly where its
   p is over-estimated, so even a calibrated p is optimistic on the jobs it picks. We measure this
   by cross-validation on the training split: fit the predictor on K-1 folds, route the held-out
   fold with the production policy (a simulated fleet, as the replay itself) at several alphas, and average (mean predicted p of the chosen models -
   realised score). Measuring against the predicted mean, not alpha, keeps slack windows (where
   the cheapest model already beats alpha) from hiding a bias. Test data is never touched.
2. *Sampling noise*: H jobs realise their mean with standard deviation about sqrt(a(1-a)/H), so
   the promise gets z of those (z = 1.645: 95% one-sided) for the horizon H it covers.

margin(alpha) = max(0, bias) + z * sqrt(alpha (1 - alpha) / H).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from scheduler.datasets.costing import OutcomeMatrix
from scheduler.datasets.records import ModelPrice
from scheduler.replay.policies import SolverChoice
from scheduler.replay.simulated_fleet import PolicyRouter, fleet_predictions, production_fit, simulated_fleet

DEFAULT_Z = 1.645


@dataclass(frozen=True)
class SafetyMargin:
    bias: float       # mean (predicted - realised) quality of optimizer plans on cross-validated predictions
    z: float
    horizon_jobs: int

    def __call__(self, alpha: float) -> float:
        noise = self.z * np.sqrt(max(alpha * (1.0 - alpha), 0.0) / max(self.horizon_jobs, 1))
        return float(max(self.bias, 0.0) + noise)


def cross_validated_bias(
    train: OutcomeMatrix,
    prices: dict[str, ModelPrice],
    predictor_name: str,
    *,
    window: int,
    solver: SolverChoice,
    assumed_output_tokens: float,
    folds: int = 3,
    num_alphas: int = 8,
    seed: int = 0,
    use_tasks: bool = True,
    on_step: Callable[[], None] | None = None,
) -> float:
    """Mean (predicted - realised) quality of optimizer-routed held-out folds of the training split."""
    n = len(train.ids)
    if n < 4 * folds:
        return 0.0
    shortfalls: list[float] = []
    rng = np.random.default_rng(seed)
    for fit_idx, held_idx in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        fit = train.subset(np.isin(np.arange(n), fit_idx))
        held = train.subset(np.isin(np.arange(n), held_idx))
        held = held.subset(held.complete_rows())
        if len(held.ids) == 0:
            continue
        # The production predictor and policy on a simulated fleet priced from this fold, as the replay routes.
        fleet = simulated_fleet(held.models, prices, fit, window)
        predictor = production_fit(predictor_name, fit, use_tasks, model_names=fleet.names)
        p_all, tokens_all = fleet_predictions(fleet, predictor, held.ids, held.prompts,
                                              held.tasks if use_tasks else None, assumed_output_tokens)
        order = rng.permutation(len(held.ids))
        p, s, tokens = p_all[order], held.scores[order], tokens_all[order]
        router = PolicyRouter(fleet, [held.ids[i] for i in order], [held.prompts[i] for i in order], p, tokens,
                              solver, window)
        rates = np.nanmean(fit.scores, axis=0)
        for alpha in _alphas(rates, num_alphas):
            pick = router.route(alpha)
            rows = np.arange(len(pick))
            shortfalls.append(float(p[rows, pick].mean() - s[rows, pick].mean()))
        if on_step is not None:
            on_step()
    return float(np.mean(shortfalls)) if shortfalls else 0.0


def _alphas(rates: Sequence[float] | np.ndarray, num: int) -> np.ndarray:
    """Alphas between the worst and the best model's base rate: where promises are made."""
    lo, hi = float(np.min(rates)), float(np.max(rates))
    return np.linspace(lo + 0.1 * (hi - lo), hi, num)
