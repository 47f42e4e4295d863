"""The predictor as the tick sees it: one column per fleet model, with an exploration bonus.

A fitted predictor knows the models it was trained on; a fleet model it has never seen gets its
fleet-file prior. With bandit feedback only the chosen model's outcome is ever observed, so a
model that looks worse early would never be tried again. Following PerLLM's constraint-pruned
UCB, a share of each window's jobs (the exploration budget) sees each model's p raised by
delta * sqrt(ln(1 + total labels) / (1 + that model's labels)); hard constraints (allow-lists,
deadlines, caps, live capacity) still prune those pairs, and the bonus fades as labels arrive.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.fleet import Fleet
from scheduler.predictor import Predictor


@dataclass(frozen=True)
class FleetPrediction:
    p_success: np.ndarray              # (N, M_fleet)
    output_tokens: np.ndarray | None   # (N, M_fleet), nan where unknown; None when nothing predicts lengths


@dataclass(frozen=True)
class Exploration:
    delta: float = 0.1                 # size of the confidence bonus
    budget_fraction: float = 0.1       # share of a window's jobs that may explore
    seed: int = 0

    def bonus(self, label_counts: Sequence[int]) -> np.ndarray:
        counts = np.asarray(label_counts, dtype=float)
        return self.delta * np.sqrt(np.log1p(counts.sum()) / (1.0 + counts))


class FleetPredictor:
    def __init__(self, fleet: Fleet, fitted: Predictor | None, version: str | None,
                 label_counts: Mapping[str, int], exploration: Exploration | None) -> None:
        self.fleet = fleet
        self.fitted = fitted
        self.version = version
        self.exploration = exploration
        self._counts = [int(label_counts.get(name, 0)) for name in fleet.names]
        self._priors = np.array([spec.quality_prior for spec in fleet.models])
        self._rng = np.random.default_rng(exploration.seed if exploration else 0)

    @property
    def name(self) -> str:
        base = f"{self.fitted.name}@{self.version}" if self.fitted is not None else "fleet-prior"
        return base + ("+ucb" if self.exploration else "")

    def predict(self, prompts: Sequence[str]) -> FleetPrediction:
        n, m = len(prompts), len(self.fleet.models)
        p = np.tile(self._priors, (n, 1))
        tokens: np.ndarray | None = None
        if self.fitted is not None and n:
            prediction = self.fitted.predict(list(prompts))
            known = {name: k for k, name in enumerate(prediction.model_names)}
            for j, name in enumerate(self.fleet.names):
                if name in known:
                    p[:, j] = prediction.p_success[:, known[name]]
                    if prediction.output_tokens is not None:
                        tokens = np.full((n, m), np.nan) if tokens is None else tokens
                        tokens[:, j] = prediction.output_tokens[:, known[name]]
        if self.exploration is not None and n:
            explorers = self._rng.random(n) < self.exploration.budget_fraction
            p[explorers] += self.exploration.bonus(self._counts)[None, :]
        return FleetPrediction(np.clip(p, 0.0, 1.0), tokens)
