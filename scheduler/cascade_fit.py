"""Fitting a cascade model (scheduler/cascade.py) from outcome data with answers: one function for
the replay and for production (``switchyard predictor fit --dataset FILE --cascade``).

What a cascade strategy is expected to cost and deliver must be learnt from post-hoc p on answers
the post-hoc estimator did not learn from, and from ex-ante p the ex-ante predictor did not learn
from, or the planner would believe both more than they deserve. So, on the training jobs only:

1. the ex-ante predictor's out-of-fold p (:func:`scheduler.predictor.posthoc.cross_fit_ex_ante`);
2. the post-hoc estimator cross-fitted: fit on K-1 job folds, judge the held-out fold's real
   answers (:class:`CrossFittedJudge`);
3. :meth:`scheduler.cascade.CascadeModel.fit` on those.

A diagnostic may hand in what steps 1 and 2 compute (``ex_ante_oof``, ``posthoc_judge``): e.g.
``scripts/posthoc_needed.py`` fits the cascade model from a synthetic post-hoc estimator to ask how
good the real one must be. Production and the replay pass neither.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import KFold

from scheduler.cascade import CascadeModel, Judge
from scheduler.datasets.costing import OutcomeMatrix
from scheduler.predictor.posthoc import AnswerTable, PosthocEstimator, cross_fit_ex_ante, make_posthoc


class CrossFittedJudge:
    """Post-hoc p of a job set's real answers (:data:`scheduler.cascade.Judge`), computed once per
    (model, answers beside it) for every job and kept. ``parts`` are (job rows, estimator, their
    answer table): one part for a test split; one per fold for a training cross-fit, where each
    fold's answers are judged by an estimator that did not learn from them."""

    def __init__(self, n: int, m: int, parts: Sequence[tuple[np.ndarray, PosthocEstimator, AnswerTable]]) -> None:
        self.n, self.m = n, m
        self.parts = list(parts)
        self._cache: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def __call__(self, model: int, others: tuple[int, ...]) -> np.ndarray:
        key = (model, tuple(sorted(others)))
        if key not in self._cache:
            p = np.full(self.n, np.nan)
            for rows, est, table in self.parts:
                earlier = np.zeros((len(rows), self.m), dtype=bool)
                earlier[:, list(key[1])] = True
                p[rows] = est.predict_table(table, np.arange(len(rows)), np.full(len(rows), model), earlier)
                # an answer judged beside one that is missing is not the query asked: leave it unknown
                p[rows[~table.answered[:, list(key[1])].all(axis=1)]] = np.nan
            self._cache[key] = p
        return self._cache[key]


def fit_cascade_model(train: OutcomeMatrix, predictor: str, mean_cost_usd: Sequence[float], *,
                      use_tasks: bool, folds: int = 3, seed: int = 0, posthoc: str = "posthoc",
                      ex_ante_oof: np.ndarray | None = None, posthoc_judge: Judge | None = None
                      ) -> tuple[CascadeModel, np.ndarray]:
    """The cascade model fitted on ``train`` (see the module doc), and the ex-ante predictor's
    out-of-fold p on train that it used (the post-hoc estimator's feature, for a caller that
    fits a post-hoc estimator on all of train too). ``mean_cost_usd``: each model's mean cost of a
    job, which orders the strategies' models from cheap to dear.

    Injection (diagnostics only; None, the default, computes them here): ``ex_ante_oof`` (N, M)
    the out-of-fold ex-ante p on train, used instead of cross-fitting the ex-ante predictor;
    ``posthoc_judge`` the post-hoc p of train's answers (a :data:`scheduler.cascade.Judge` over
    train's rows), used instead of cross-fitting the post-hoc estimator ``posthoc``."""
    if train.responses is None:
        raise ValueError("the outcome data logs no answers (outcomes[MODEL].response): no cascade to fit")
    tasks = train.tasks if use_tasks else None
    n, m = train.scores.shape
    if ex_ante_oof is not None:
        if ex_ante_oof.shape != (n, m):
            raise ValueError(f"ex_ante_oof has shape {ex_ante_oof.shape}, train has {(n, m)}")
        oof_ex = ex_ante_oof
    else:
        oof_ex = cross_fit_ex_ante(predictor, train.prompts, train.scores, train.output_tokens, train.models,
                                   tasks=tasks, folds=folds, seed=seed)
    judge = posthoc_judge if posthoc_judge is not None else _cross_fitted_judge(
        train, oof_ex, tasks, folds=folds, seed=seed, posthoc=posthoc)
    model = CascadeModel().fit(train.models, train.scores, oof_ex, judge, mean_cost_usd)
    return model, oof_ex


def _cross_fitted_judge(train: OutcomeMatrix, oof_ex: np.ndarray, tasks: Sequence[str] | None, *, folds: int,
                        seed: int, posthoc: str) -> CrossFittedJudge:
    """The post-hoc estimator cross-fitted on ``train``: each fold's answers judged by one fitted
    on the other folds."""
    responses = train.responses
    if responses is None:
        raise ValueError("the outcome data logs no answers: no post-hoc estimator to cross-fit")
    n, m = train.scores.shape
    parts = []
    for fit_rows, held in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        est = make_posthoc(posthoc, seed=seed).fit(
            _pick(train.prompts, fit_rows), train.scores[fit_rows], responses[fit_rows], train.models,
            tasks=None if tasks is None else _pick(tasks, fit_rows), ex_ante_p=oof_ex[fit_rows])
        table = est.featurize(_pick(train.prompts, held), responses[held],
                              tasks=None if tasks is None else _pick(tasks, held), ex_ante_p=oof_ex[held])
        parts.append((held, est, table))
    return CrossFittedJudge(n, m, parts)


def _pick(items: Sequence[str], idx: np.ndarray) -> list[str]:
    return [items[i] for i in idx]
