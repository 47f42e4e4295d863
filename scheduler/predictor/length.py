"""Output-length regressor: expected generated tokens per (prompt, model).

Ridge regression on log(1 + tokens) per model with the penalty chosen by efficient leave-one-out
(RidgeCV), mapped back with Duan's smearing factor so the prediction is a mean, not a median --
cost is linear in tokens, so the mean is what the optimizer needs. Models never observed with a
token count get the mean over the models that were (or None overall when no tokens were logged).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV

ALPHAS = (0.1, 1.0, 10.0, 100.0)


class OutputLengthModel:
    def __init__(self) -> None:
        self._models: list[tuple[RidgeCV, float] | float | None] = []

    def fit(self, x: np.ndarray, tokens: np.ndarray) -> OutputLengthModel:
        self._models = []
        for j in range(tokens.shape[1]):
            seen = ~np.isnan(tokens[:, j])
            if seen.sum() < 10:
                self._models.append(float(np.mean(tokens[seen, j])) if seen.any() else None)
                continue
            y = np.log1p(np.maximum(tokens[seen, j], 0.0))
            reg = RidgeCV(alphas=ALPHAS).fit(x[seen], y)
            smear = float(np.mean(np.exp(y - reg.predict(x[seen]))))
            self._models.append((reg, smear))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        cols: list[np.ndarray | None] = []
        for state in self._models:
            if state is None:
                cols.append(None)
            elif isinstance(state, float):
                cols.append(np.full(x.shape[0], state))
            else:
                reg, smear = state
                cols.append(np.maximum(np.expm1(reg.predict(x)) * smear, 0.0))
        known = [c for c in cols if c is not None]
        fallback = np.mean(known, axis=0) if known else np.zeros(x.shape[0])
        return np.column_stack([c if c is not None else fallback for c in cols])
