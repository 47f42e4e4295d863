"""What an online replay reports: per-window rows, per-policy regret, and summaries over seeds.

The definitions (score and cost regret against the oracle, rates over the first and last
quarter of the stream) are in docs/replay-online.md; ``scheduler.replay.online`` fills these in.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class WindowRow:
    end: int                   # arrivals routed so far
    quality: float             # mean realised score in this window
    cost_usd: float            # realised cost of this window
    cum_score_regret: float
    cum_cost_regret_usd: float
    cum_cost_regret_share: float
    explored: int = 0          # jobs pinned to explore a little-tried model
    mean_p_chosen: float | None = None   # mean predicted p of the chosen models
    margin: float = 0.0        # promise margin added to alpha in this window
    refit: bool = False        # the predictor was refitted after this window


@dataclass
class OnlinePolicy:
    quality: float
    cost_usd: float
    cost_share_of_best: float
    score_regret: float
    cost_regret_usd: float
    cost_regret_share: float
    shortfall: float           # alpha * n - sum of realised scores (> 0: under the promise)
    rate_first_quarter: dict[str, float]
    rate_last_quarter: dict[str, float]
    jobs_per_model: dict[str, int]
    windows: list[WindowRow]
    fits: int = 0
    fit_s: float = 0.0
    total_s: float = 0.0


@dataclass
class OnlineReport:
    dataset: str
    mode: str                  # "online" (warm) | "cold"
    stream: str
    n_stream: int
    n_history_initial: int
    alpha: float
    alpha_rule: str
    window: int
    refit_every: int
    predictor: str
    exploration: dict[str, float]
    promise_check_labels: int
    models: list[str]
    best_single: dict[str, Any]
    policies: dict[str, OnlinePolicy]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def regret_rates(score_gap: np.ndarray, cost_gap: np.ndarray, best_cost: np.ndarray, lo: int, hi: int) -> dict[str, float]:
    """Regret per arrival over arrivals [lo, hi): score, cost in USD, cost as a share of the best model's."""
    sl = slice(lo, hi)
    bc = float(best_cost[sl].sum())
    return {"from": lo, "to": hi, "score_regret_per_job": float(score_gap[sl].mean()),
            "cost_regret_usd_per_job": float(cost_gap[sl].mean()),
            "cost_regret_share": float(cost_gap[sl].sum() / bc) if bc > 0 else 0.0}


SUMMARY_FIELDS = ("quality", "cost_share_of_best", "score_regret", "cost_regret_share", "shortfall")


def summarise_runs(reports: list[OnlineReport]) -> dict[str, dict[str, dict[str, float]]]:
    """Per policy and measure: mean and standard deviation over the runs (sd 0 for one run)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in reports[0].policies:
        rows: dict[str, list[float]] = {f: [getattr(r.policies[name], f) for r in reports] for f in SUMMARY_FIELDS}
        for quarter in ("first", "last"):
            for key in ("score_regret_per_job", "cost_regret_share"):
                rows[f"{quarter}_quarter_{key}"] = [getattr(r.policies[name], f"rate_{quarter}_quarter")[key]
                                                    for r in reports]
        out[name] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                     for k, v in rows.items()}
    return out


def repeats_json(reports: list[OnlineReport]) -> dict[str, Any]:
    """The JSON of several runs: the summary over seeds, then every run's own report."""
    first = reports[0]
    return {"dataset": first.dataset, "mode": first.mode, "stream": first.stream, "n_stream": first.n_stream,
            "alpha": first.alpha, "repeats": len(reports), "seeds": [r.details["seed"] for r in reports],
            "summary": summarise_runs(reports), "runs": [r.to_json() for r in reports]}
