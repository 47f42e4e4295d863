"""The ``switchyard-cascade`` curve: the production policy with cascade columns, simulated truthfully.

Fitting (train split only): :func:`scheduler.cascade_fit.fit_cascade_model`, the fit production
uses too (the ex-ante and post-hoc cross-fits, then the cascade model); and the post-hoc
estimator on all of train for the test answers.

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

from scheduler.cascade import CascadeModel, CascadeStrategy, Judge, run_cascade
from scheduler.cascade_fit import CrossFittedJudge, fit_cascade_model
from scheduler.datasets.costing import OutcomeMatrix
from scheduler.plan import Plan
from scheduler.predictor.posthoc import make_posthoc


@dataclass(frozen=True)
class CascadeFit:
    model: CascadeModel
    test: CrossFittedJudge  # the test jobs' answers, in arrival order
    fit_s: float


def fit_cascade(train: OutcomeMatrix, test: OutcomeMatrix, test_ex_ante_p: np.ndarray, predictor: str,
                mean_cost_usd: Sequence[float], *, use_tasks: bool, folds: int = 3, seed: int = 0,
                posthoc: str = "posthoc") -> CascadeFit:
    """Fit everything the cascade curve needs on ``train``; read ``test``'s answers (arrival order)."""
    if train.responses is None or test.responses is None:
        raise ValueError("the dataset logs no answers (outcomes[MODEL].response): no cascade to replay")
    start = time.perf_counter()
    model, oof_ex = fit_cascade_model(train, predictor, mean_cost_usd, use_tasks=use_tasks, folds=folds, seed=seed,
                                      posthoc=posthoc)
    judge = posthoc_test_judge(train, test, oof_ex, test_ex_ante_p, use_tasks=use_tasks, seed=seed, posthoc=posthoc)
    return CascadeFit(model, judge, time.perf_counter() - start)


def posthoc_test_judge(train: OutcomeMatrix, test: OutcomeMatrix, train_ex_ante_oof: np.ndarray,
                       test_ex_ante_p: np.ndarray, *, use_tasks: bool, seed: int = 0, posthoc: str = "posthoc"
                       ) -> CrossFittedJudge:
    """The post-hoc estimator fitted on all of ``train`` (with the ex-ante predictor's out-of-fold
    p there as its feature), judging ``test``'s answers (with its ex-ante p)."""
    if train.responses is None or test.responses is None:
        raise ValueError("the dataset logs no answers (outcomes[MODEL].response): no post-hoc estimator to fit")
    full = make_posthoc(posthoc, seed=seed).fit(train.prompts, train.scores, train.responses, train.models,
                                                tasks=train.tasks if use_tasks else None, ex_ante_p=train_ex_ante_oof)
    table = full.featurize(test.prompts, test.responses, tasks=test.tasks if use_tasks else None,
                           ex_ante_p=test_ex_ante_p)
    return CrossFittedJudge(len(test.ids), train.scores.shape[1], [(np.arange(len(test.ids)), full, table)])


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

