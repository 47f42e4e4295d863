"""The ``switchyard-cascade`` curve: the production policy with cascade columns, simulated truthfully.

Fitting (train split only):

1. the ex-ante predictor's out-of-fold p on train (:func:`cross_fit_ex_ante`), the post-hoc
   estimator's feature;
2. the post-hoc estimator cross-fitted on train (fit on K-1 job folds, judge the held-out fold's
   answers, :class:`PosthocJudge`), so the cascade model learns from p on answers the estimator
   did not learn from;
3. :class:`scheduler.cascade.CascadeModel` on those, and the post-hoc estimator on all of train
   for the test answers.

Routing: each window is one ``OptimizingPolicy.plan`` on the simulated fleet
(:mod:`scheduler.replay.simulated_fleet`) with the cascade model, so a job's plan is a direct model
or a cascade ("k, then l if post-hoc p < t", ...). Simulation: the policy learns a model's answer
and outcome only when it ran it. A job runs its first model (its realised cost is paid); the
post-hoc estimator judges that model's real test answer; below the threshold the job runs the next
model too (paid as well), and so on, keeping the best judged answer
(:func:`scheduler.cascade.run_cascade`). The post-hoc p of the test answers are computed for all
jobs at once per (model, answers beside it), which reveals nothing: a job's p is only read after
the plan ran that model on it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from scheduler.cascade import CascadeModel, CascadeStrategy, Judge, run_cascade
from scheduler.datasets.costing import OutcomeMatrix
from scheduler.plan import Plan
from scheduler.predictor.posthoc import AnswerTable, PosthocEstimator, cross_fit_ex_ante, make_posthoc


class PosthocJudge:
    """Post-hoc p of a job set's real answers (:data:`scheduler.cascade.Judge`), computed once per
    (model, answers beside it) for every job and kept. ``parts`` are (job rows, estimator, their
    answer table): one part for the test split; one per fold for the training cross-fit, where
    each fold's answers are judged by an estimator that did not learn from them."""

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


@dataclass(frozen=True)
class CascadeFit:
    model: CascadeModel
    test: PosthocJudge      # the test jobs' answers, in arrival order
    fit_s: float


def fit_cascade(train: OutcomeMatrix, test: OutcomeMatrix, test_ex_ante_p: np.ndarray, predictor: str,
                mean_cost_usd: Sequence[float], *, use_tasks: bool, folds: int = 3, seed: int = 0,
                posthoc: str = "posthoc") -> CascadeFit:
    """Fit everything the cascade curve needs on ``train``; read ``test``'s answers (arrival order)."""
    if train.responses is None or test.responses is None:
        raise ValueError("the dataset logs no answers (outcomes[MODEL].response): no cascade to replay")
    start = time.perf_counter()
    tasks = train.tasks if use_tasks else None
    oof_ex = cross_fit_ex_ante(predictor, train.prompts, train.scores, train.output_tokens, train.models,
                               tasks=tasks, folds=folds, seed=seed)
    n, m = train.scores.shape
    parts = []
    for fit_rows, held in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        est = make_posthoc(posthoc, seed=seed).fit(
            _pick(train.prompts, fit_rows), train.scores[fit_rows], train.responses[fit_rows], train.models,
            tasks=None if tasks is None else _pick(tasks, fit_rows), ex_ante_p=oof_ex[fit_rows])
        table = est.featurize(_pick(train.prompts, held), train.responses[held],
                              tasks=None if tasks is None else _pick(tasks, held), ex_ante_p=oof_ex[held])
        parts.append((held, est, table))
    model = CascadeModel().fit(train.models, train.scores, oof_ex, PosthocJudge(n, m, parts), mean_cost_usd)
    full = make_posthoc(posthoc, seed=seed).fit(train.prompts, train.scores, train.responses, train.models,
                                                tasks=tasks, ex_ante_p=oof_ex)
    table = full.featurize(test.prompts, test.responses, tasks=test.tasks if use_tasks else None,
                           ex_ante_p=test_ex_ante_p)
    judge = PosthocJudge(len(test.ids), m, [(np.arange(len(test.ids)), full, table)])
    return CascadeFit(model, judge, time.perf_counter() - start)


@dataclass(frozen=True)
class CascadeRun:
    """What running the plans cost and delivered, per job (arrival order)."""

    score: np.ndarray       # (N,) realised score of the accepted answer
    cost_usd: np.ndarray    # (N,) realised cost of every model run
    models_run: np.ndarray  # (N,) 1, 2 or 3
    escalated: np.ndarray   # (N,) bool: more than one model ran

    def summary(self) -> dict[str, float]:
        return {"models_run_per_job": float(self.models_run.mean()),
                "share_escalated": float(self.escalated.mean())}


def run_plans(plans: Sequence[Plan], ids: Sequence[str], column: dict[str, int], judge: Judge,
              scores: np.ndarray, real_cost: np.ndarray) -> CascadeRun:
    """Execute ``plans`` on the test jobs: pay each model run, read an answer's post-hoc p only
    after its model ran (:func:`scheduler.cascade.run_cascade`), keep the answer the rule keeps."""
    row = {job_id: i for i, job_id in enumerate(ids)}
    n = len(ids)
    score, cost = np.full(n, np.nan), np.full(n, np.nan)
    runs = np.zeros(n, dtype=np.int64)
    by_strategy: dict[CascadeStrategy, list[int]] = {}
    for plan in plans:
        for a in plan.assignments:
            i = row[a.job_id]
            models = (column[a.model], *(column[step.next_model] for step in a.cascade))
            strategy = CascadeStrategy(models, tuple(step.accept_at for step in a.cascade))
            by_strategy.setdefault(strategy, []).append(i)
    for strategy, jobs in by_strategy.items():
        rows = np.array(jobs)
        ran, final = run_cascade(strategy, lambda a, others: judge(a, others)[rows], scores[rows])
        score[rows] = final
        cost[rows] = (ran * real_cost[rows][:, list(strategy.models)]).sum(axis=1)
        runs[rows] = ran.sum(axis=1)
    if np.isnan(score).any():
        raise RuntimeError(f"{int(np.isnan(score).sum())} jobs were not placed by any plan")
    return CascadeRun(score, cost, runs, runs > 1)


def _pick(items: Sequence[str], idx: np.ndarray) -> list[str]:
    return [items[i] for i in idx]
