"""Outcome records as arrays, and the one rule that turns prices and tokens into dollars.

Cost rule (used by every converter, by replay for scoring, and for the decision cost; the dollars
themselves come from scheduler/costs.py, as for the fleet):
``cost_usd`` when the log has it; otherwise
``input_usd_per_mtok * prompt_tokens + output_usd_per_mtok * output_tokens`` (per million), where
prompt tokens are estimated from the prompt text (:func:`estimate_tokens`) and output tokens are
the logged count or, where the log has none, ``assumed_output_tokens``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.costs import estimate_tokens, token_cost_usd
from scheduler.datasets.records import DatasetFormatError, ModelPrice, OutcomeRecord

DEFAULT_ASSUMED_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class OutcomeMatrix:
    """Records x models as arrays; nan marks an unobserved (record, model) pair."""

    ids: list[str]
    prompts: list[str]
    tasks: list[str]
    models: list[str]
    scores: np.ndarray          # (N, M) float, nan = unobserved
    cost_usd: np.ndarray        # (N, M) float, nan = not logged
    output_tokens: np.ndarray   # (N, M) float, nan = not logged
    prompt_tokens: np.ndarray   # (N,) float, estimated from the prompt text
    #: (N, M) object array of the logged answer texts (None = not logged), or None when no record
    #: in the set logged any (the post-hoc estimator reads them; see scheduler/predictor/posthoc.py)
    responses: np.ndarray | None = None

    @classmethod
    def from_records(cls, records: Sequence[OutcomeRecord], models: Sequence[str]) -> OutcomeMatrix:
        n, m = len(records), len(models)
        col = {name: j for j, name in enumerate(models)}
        scores = np.full((n, m), np.nan)
        cost = np.full((n, m), np.nan)
        tokens = np.full((n, m), np.nan)
        responses = np.full((n, m), None, dtype=object)
        for i, rec in enumerate(records):
            for name, out in rec.outcomes.items():
                j = col.get(name)
                if j is None:
                    continue
                scores[i, j] = out.score
                if out.cost_usd is not None:
                    cost[i, j] = out.cost_usd
                if out.output_tokens is not None:
                    tokens[i, j] = out.output_tokens
                responses[i, j] = out.response
        return cls(
            ids=[r.id for r in records],
            prompts=[r.prompt for r in records],
            tasks=[r.task for r in records],
            models=list(models),
            scores=scores,
            cost_usd=cost,
            output_tokens=tokens,
            prompt_tokens=np.array([estimate_tokens(r.prompt) for r in records], dtype=float),
            responses=responses if any(x is not None for x in responses.flat) else None,
        )

    def complete_rows(self) -> np.ndarray:
        """Mask of records on which every model was observed (the only ones replay can score)."""
        return ~np.isnan(self.scores).any(axis=1)

    def subset(self, rows: np.ndarray) -> OutcomeMatrix:
        """The rows selected by a boolean mask, or by integer indices in the order given."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return OutcomeMatrix(
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            models=self.models,
            scores=self.scores[idx],
            cost_usd=self.cost_usd[idx],
            output_tokens=self.output_tokens[idx],
            prompt_tokens=self.prompt_tokens[idx],
            responses=None if self.responses is None else self.responses[idx],
        )


def price_arrays(models: Sequence[str], prices: dict[str, ModelPrice]) -> tuple[np.ndarray, np.ndarray]:
    """(M,) input and output USD per million tokens; nan where the price is unknown."""
    pin = np.array([_or_nan(prices.get(m, ModelPrice()).input_usd_per_mtok) for m in models])
    pout = np.array([_or_nan(prices.get(m, ModelPrice()).output_usd_per_mtok) for m in models])
    return pin, pout


def matrix_token_cost_usd(
    prompt_tokens: np.ndarray, output_tokens: np.ndarray, pin: np.ndarray, pout: np.ndarray
) -> np.ndarray:
    """(N, M) cost of ``prompt_tokens[i]`` in and ``output_tokens[i, j]`` out at each model's
    per-million-token prices (``price_arrays``)."""
    return token_cost_usd(prompt_tokens[:, None], output_tokens, pin[None, :], pout[None, :])


def realised_cost_usd(
    matrix: OutcomeMatrix,
    prices: dict[str, ModelPrice],
    assumed_output_tokens: float = DEFAULT_ASSUMED_OUTPUT_TOKENS,
) -> np.ndarray:
    """(N, M) what each call cost (or would have cost) by the module's cost rule; for scoring only."""
    pin, pout = price_arrays(matrix.models, prices)
    tokens = np.where(np.isnan(matrix.output_tokens), assumed_output_tokens, matrix.output_tokens)
    cost = np.where(np.isnan(matrix.cost_usd), matrix_token_cost_usd(matrix.prompt_tokens, tokens, pin, pout),
                    matrix.cost_usd)
    observed = ~np.isnan(matrix.scores)
    if np.isnan(cost[observed]).any():
        bad = sorted({matrix.models[j] for j in np.flatnonzero(np.isnan(cost).any(axis=0))})
        raise DatasetFormatError(f"no cost_usd and no prices for models {bad}")
    return cost


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
