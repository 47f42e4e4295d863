"""The two cost matrices of a replay: what a policy may *believe* and what it *pays*.

Decisions only see the decision cost: list prices x (estimated prompt tokens + the predictor's
expected output tokens). Scoring uses the realised cost (the logged ``cost_usd``, else prices x
the logged tokens; :func:`scheduler.datasets.costing.realised_cost_usd`). Keeping them apart is
what stops a replay from leaking test outcomes into decisions.
"""
from __future__ import annotations

import numpy as np

from scheduler.datasets.costing import OutcomeMatrix, matrix_token_cost_usd, price_arrays
from scheduler.datasets.records import ModelPrice


def decision_cost_usd(
    test: OutcomeMatrix,
    train: OutcomeMatrix,
    prices: dict[str, ModelPrice],
    predicted_tokens: np.ndarray | None,
    assumed_output_tokens: float,
) -> np.ndarray:
    """(N, M) expected cost of each test job on each model, from prices and predictions only.

    A model without list prices (its log has ``cost_usd`` only) is priced by its mean *training*
    cost per prompt token, times the job's prompt tokens.
    """
    n, m = len(test.ids), len(test.models)
    tokens = predicted_tokens if predicted_tokens is not None else np.full((n, m), float(assumed_output_tokens))
    pin, pout = price_arrays(test.models, prices)
    cost = matrix_token_cost_usd(test.prompt_tokens, tokens, pin, pout)
    for j in np.flatnonzero(np.isnan(pin) | np.isnan(pout)):
        seen = ~np.isnan(train.cost_usd[:, j])
        if not seen.any():
            raise ValueError(f"model {test.models[j]!r} has neither prices nor logged training costs")
        per_token = train.cost_usd[seen, j].sum() / train.prompt_tokens[seen].sum()
        cost[:, j] = per_token * test.prompt_tokens
    return cost
