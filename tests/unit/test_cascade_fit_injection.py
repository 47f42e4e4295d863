"""fit_cascade_model's diagnostic injection: a given post-hoc judge and out-of-fold ex-ante p are
used as they are, and nothing is fitted in their place (scripts/posthoc_needed.py relies on it)."""
from __future__ import annotations

import numpy as np
import pytest

import scheduler.cascade_fit as cascade_fit
from scheduler.cascade_fit import fit_cascade_model
from scheduler.datasets import OutcomeMatrix


def outcomes(n: int = 200, seed: int = 0) -> OutcomeMatrix:
    """A cheap model right 60% of the time, a dear one 90%, both with logged answers."""
    rng = np.random.default_rng(seed)
    scores = np.column_stack([rng.random(n) < 0.6, rng.random(n) < 0.9]).astype(float)
    responses = np.array([[f"answer {i} cheap", f"answer {i} dear"] for i in range(n)], dtype=object)
    return OutcomeMatrix(ids=[f"j{i}" for i in range(n)], prompts=[f"question {i}" for i in range(n)],
                         tasks=["t"] * n, models=["cheap", "dear"], scores=scores, cost_usd=np.full((n, 2), 1.0),
                         output_tokens=np.full((n, 2), 10.0), prompt_tokens=np.full(n, 5.0), responses=responses)


def test_an_injected_judge_and_ex_ante_p_are_used_and_nothing_is_fitted(monkeypatch: pytest.MonkeyPatch) -> None:
    train = outcomes()

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("fitted although the caller handed the result in")

    monkeypatch.setattr(cascade_fit, "cross_fit_ex_ante", refuse)
    monkeypatch.setattr(cascade_fit, "make_posthoc", refuse)
    ex_ante = np.tile([0.6, 0.9], (len(train.ids), 1))
    calls: list[tuple[int, tuple[int, ...]]] = []

    def perfect(a: int, others: tuple[int, ...]) -> np.ndarray:   # p = the true outcome
        calls.append((a, others))
        return train.scores[:, a]

    model, oof = fit_cascade_model(train, "unused", [1.0, 10.0], use_tasks=True, ex_ante_oof=ex_ante,
                                   posthoc_judge=perfect)
    assert oof is ex_ante
    assert calls and {a for a, _ in calls} == {0, 1}
    # a perfect judge escalates exactly the cheap model's wrong answers and keeps the dear answer
    # then (a tie goes to the later one): every threshold is the same strategy, kept once
    cheap, dear = train.scores[:, 0], train.scores[:, 1]
    assert len(model.strategies) == 1 and model.strategies[0].models == (0, 1)
    cost, quality = model.train_means_[0]
    assert cost == pytest.approx(1.0 + 10.0 * float((cheap == 0).mean()))
    assert quality == pytest.approx(float(np.maximum(cheap, dear).mean()))


def test_injected_ex_ante_p_of_the_wrong_shape_is_refused() -> None:
    train = outcomes(40)
    with pytest.raises(ValueError, match="ex_ante_oof has shape"):
        fit_cascade_model(train, "unused", [1.0, 10.0], use_tasks=True, ex_ante_oof=np.full((39, 2), 0.5),
                          posthoc_judge=lambda a, others: train.scores[:, a])
