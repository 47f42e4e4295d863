"""The two cost matrices of a replay: what a policy may *believe* and what it *pays*.

Decisions only see the decision cost: list prices x (estimated prompt tokens + the predictor's
expected output tokens). Scoring uses the realised cost (the logged ``cost_usd``, else prices x
the logged tokens; :func:`scheduler.datasets.costing.realised_cost_usd`). Keeping them apart is
what stops a replay from leaking test outcomes into decisions.

``decision_prices`` is the one place the per-token prices a policy believes are set: the decision
cost matrix below and the simulated fleet that the production policy plans on
(:mod:`scheduler.replay.simulated_fleet`) both read it, so the two cannot drift apart.
"""
from __future__ import annotations

import numpy as np

from scheduler.datasets.costing import OutcomeMatrix, matrix_token_cost_usd, price_arrays
from scheduler.datasets.records import ModelPrice


def decision_prices(models: list[str], prices: dict[str, ModelPrice], train: OutcomeMatrix
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(M,) input and output USD per million tokens a policy believes for each model.

    A model without list prices (its log has ``cost_usd`` only) is priced by its mean *training*
    cost per prompt token, as an input price with a zero output price.
    """
    pin, pout = price_arrays(models, prices)
    for j in np.flatnonzero(np.isnan(pin) | np.isnan(pout)):
        seen = ~np.isnan(train.cost_usd[:, j])
        if not seen.any():
            raise ValueError(f"model {models[j]!r} has neither prices nor logged training costs")
        pin[j] = train.cost_usd[seen, j].sum() / train.prompt_tokens[seen].sum() * 1e6
        pout[j] = 0.0
    return pin, pout


def decision_cost_usd(
    test: OutcomeMatrix,
    train: OutcomeMatrix,
    prices: dict[str, ModelPrice],
    predicted_tokens: np.ndarray | None,
    assumed_output_tokens: float,
) -> np.ndarray:
    """(N, M) expected cost of each test job on each model, from prices and predictions only."""
    n, m = len(test.ids), len(test.models)
    tokens = predicted_tokens if predicted_tokens is not None else np.full((n, m), float(assumed_output_tokens))
    pin, pout = decision_prices(test.models, prices, train)
    return matrix_token_cost_usd(test.prompt_tokens, tokens, pin, pout)
