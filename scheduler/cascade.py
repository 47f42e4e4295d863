"""Cascade strategies as columns of the assignment problem (issue 12, part 3).

A cascade runs a job on a first model, reads the post-hoc p of its answer
(:mod:`scheduler.predictor.posthoc`) and, when that p is below a threshold, runs the job on the
next model too; after each run every answer so far is judged with the others beside it (their
agreement is most of the signal), and the cascade stops once the best of them is at least the
step's threshold. The answer kept is the best judged one. Two shapes are offered:

* ``k -> l``: a cheap model, escalated to a dearer one below threshold t;
* ``k -> l -> g``: two cheap models (the second run always, or below t1: a second opinion whose
  agreement is what tells), then a dear one if the better of the two is below t2.

For the optimizer a strategy is one more column beside the M direct models, with a per-job
expected cost (the first model's cost plus each later model's times the chance it runs) and
expected final quality, so the existing optimizer chooses, per job, a direct model or a cascade
at the least expected cost that meets each batch's alpha -- unchanged.

The planner needs the *distribution* of the post-hoc p it will see before running anything:
:class:`CascadeModel` simulates every candidate strategy on the training jobs with the
out-of-fold post-hoc p of their real answers (:func:`run_cascade`, the rule the replay applies to
the test answers), keeps the strategies no other one beats on both mean cost and mean quality,
and learns per strategy E[final score | job] and P(step j runs | job) as small logistic
regressions on the logits of the job's ex-ante p of the strategy's models. Nothing here reads a
test outcome.

Capacity: a strategy occupies only its first model's slot in this tick (the escalations compete
in later ones), so its column shares that model's capacity row with the model's direct column
(optimizer/problem.py ``capacity_row``): in a scarce tick cascades compete for the same slots.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from scheduler.predictor.calibration import logit

# Post-hoc p below which the answers so far are escalated; the optimizer picks among them per job.
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# A threshold above any p: always run the next model (a second opinion).
ALWAYS = 2.0
SECOND_OPINION_THRESHOLDS = (ALWAYS, 0.6, 0.8)
# Second opinions come from the cheapest models (by mean training cost) only.
SECOND_OPINION_POOL = 3
MIN_JOBS = 20

#: p of model ``a``'s answer given the answers of ``others``, for every job of a set: (N,), nan
#: where ``a`` (or one of ``others``) has no answer.
Judge = Callable[[int, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class CascadeStrategy:
    models: tuple[int, ...]       # columns, in the order they run
    accept_at: tuple[float, ...]  # after running models[:s + 1], stop if the best p >= accept_at[s]

    @property
    def first(self) -> int:
        return self.models[0]


# The one rule of a cascade, shared by the replay (run_cascade, the fit's simulation) and production
# (scheduler/learning/judge.py picks the best answer, scheduler/review.py stops or escalates).

def best_answer(p: np.ndarray) -> np.ndarray:
    """Which answer a cascade keeps, given the judged p of its answers so far in the order they ran
    (axis 0; further axes are jobs): the highest p, the later (dearer) answer on a tie, an unjudged
    (nan) answer last."""
    judged = np.nan_to_num(np.asarray(p, dtype=float), nan=-np.inf)
    return judged.shape[0] - 1 - np.argmax(judged[::-1], axis=0)


def accepts(best_p: np.ndarray | float, accept_at: float) -> np.ndarray | bool:
    """Whether a cascade stops at its best answer so far: its p reaches the step's threshold."""
    return np.asarray(best_p) >= accept_at


def run_cascade(strategy: CascadeStrategy, judge: Judge, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ran (N, L) bool: which of the strategy's models ran, final score (N,)) for every job.

    After each run, each answer so far is judged given the others; the best (the later, dearer
    model's on a tie; an unjudged answer counts as worst) is kept, and the cascade stops when its
    p reaches the step's threshold or no model is left. A job's p values are only read for the
    models that ran on it."""
    n, steps = scores.shape[0], len(strategy.models)
    rows = np.arange(n)
    active = np.ones(n, dtype=bool)
    ran = np.zeros((n, steps), dtype=bool)
    ran[:, 0] = True
    final = np.full(n, np.nan)
    for s in range(steps):
        run = strategy.models[:s + 1]
        p = np.stack([judge(a, tuple(b for b in run if b != a)) for a in run])      # (s + 1, N)
        best = best_answer(p)
        best_score = scores[rows, np.asarray(run)[best]]
        at_end = s == steps - 1
        stop = active & (at_end or accepts(p[best, rows], strategy.accept_at[s]))
        final[stop] = best_score[stop]
        active &= ~stop
        if s + 1 < steps:
            ran[active, s + 1] = True
    return ran, final


def candidate_strategies(mean_cost_usd: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         second_opinion_thresholds: Sequence[float] = SECOND_OPINION_THRESHOLDS,
                         pool: int = SECOND_OPINION_POOL) -> list[CascadeStrategy]:
    """Every ``k -> l`` with l dearer than k, and every ``k -> l -> g`` with k, l among the ``pool``
    cheapest models (k the cheaper) and g dearer than both, at every threshold combination."""
    m = len(mean_cost_usd)
    cost = np.asarray(mean_cost_usd, dtype=float)
    dearer = [[b for b in range(m) if cost[b] > cost[a]] for a in range(m)]
    out = [CascadeStrategy((k, nxt), (t,)) for k in range(m) for nxt in dearer[k] for t in thresholds]
    cheap = [int(j) for j in np.argsort(cost, kind="stable")[:pool]]
    for k in cheap:
        for second in (j for j in cheap if cost[j] > cost[k]):
            for last in dearer[second]:
                out += [CascadeStrategy((k, second, last), (t1, t2))
                        for t1 in second_opinion_thresholds for t2 in thresholds]
    return out


class CascadeModel:
    """E[final score | job] and P(each step runs | job) for the cascade strategies worth offering."""

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 second_opinion_thresholds: Sequence[float] = SECOND_OPINION_THRESHOLDS,
                 pool: int = SECOND_OPINION_POOL, c: float = 1.0, prune: bool = True) -> None:
        self.prune = prune    # keep only strategies no other beats on both mean cost and quality (train)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.second_opinion_thresholds = tuple(float(t) for t in second_opinion_thresholds)
        self.pool = pool
        self.c = c
        self.model_names: tuple[str, ...] = ()
        self.strategies: tuple[CascadeStrategy, ...] = ()
        self.candidates_ = 0
        self.train_means_: list[tuple[float, float]] = []   # (mean cost, mean quality) on train, per strategy
        self._quality: list[_Logit] = []
        self._runs: list[list[_Logit]] = []

    def fit(self, model_names: Sequence[str], scores: np.ndarray, ex_ante_p: np.ndarray, judge: Judge,
            mean_cost_usd: Sequence[float]) -> CascadeModel:
        """Learn from training jobs: ``scores`` (N, M) (nan = unobserved), ``ex_ante_p`` (N, M)
        out-of-fold ex-ante p, ``judge`` the out-of-fold post-hoc p of their answers. Jobs where
        one of a strategy's models is unobserved are left out of that strategy."""
        self.model_names = tuple(model_names)
        cost = np.asarray(mean_cost_usd, dtype=float)
        candidates = candidate_strategies(cost, self.thresholds, self.second_opinion_thresholds, self.pool)
        self.candidates_ = len(candidates)
        simulated = []
        for strategy in candidates:
            seen = ~np.isnan(scores[:, list(strategy.models)]).any(axis=1)
            if seen.sum() < MIN_JOBS:
                continue
            ran, final = run_cascade(strategy, _rows_of(judge, seen), scores[seen])
            mean_cost = float((ran.mean(axis=0) * cost[list(strategy.models)]).sum())
            simulated.append((strategy, seen, ran, final, mean_cost, float(final.mean())))
        kept = _undominated([(c, q) for *_, c, q in simulated]) if self.prune else list(range(len(simulated)))
        self.strategies, self._quality, self._runs, self.train_means_ = (), [], [], []
        strategies = []
        for index in kept:
            strategy, seen, ran, final, mean_cost, quality = simulated[index]
            x = _features(ex_ante_p[seen], strategy.models)
            strategies.append(strategy)
            self._quality.append(_Logit(self.c).fit(x, final))
            self._runs.append([_Logit(self.c).fit(x, ran[:, s].astype(float)) for s in range(1, len(strategy.models))])
            self.train_means_.append((mean_cost, quality))
        self.strategies = tuple(strategies)
        return self

    def estimate(self, ex_ante_p: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """For jobs with ex-ante p ``ex_ante_p`` (N, M): expected final score (N, S) and, per
        strategy, the chance each of its models runs (N, L) (the first always does)."""
        n = ex_ante_p.shape[0]
        quality = np.empty((n, len(self.strategies)))
        runs = []
        for s, strategy in enumerate(self.strategies):
            x = _features(ex_ante_p, strategy.models)
            quality[:, s] = self._quality[s].predict(x)
            runs.append(np.column_stack([np.ones(n), *[step.predict(x) for step in self._runs[s]]]))
        return quality, runs

    def describe(self, s: int, names: Sequence[str] | None = None) -> str:
        """``a then b if post-hoc p < 0.50``, in the fleet's names (default: the fitted ones)."""
        names = list(names or self.model_names)
        strategy = self.strategies[s]
        text = names[strategy.models[0]]
        for nxt, t in zip(strategy.models[1:], strategy.accept_at, strict=True):
            text += f" then {names[nxt]} " + ("always (second opinion)" if t > 1.0 else f"if post-hoc p < {t:.2f}")
        return text


def _rows_of(judge: Judge, rows: np.ndarray) -> Judge:
    return lambda a, others: judge(a, others)[rows]


def _undominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, quality) points no other point beats on both (ties: the first)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    kept, best_quality = [], -np.inf
    for i in order:
        if points[i][1] > best_quality:
            kept.append(i)
            best_quality = points[i][1]
    return sorted(kept)


def _features(ex_ante_p: np.ndarray, models: Sequence[int]) -> np.ndarray:
    return logit(np.clip(np.nan_to_num(ex_ante_p[:, list(models)], nan=0.5), 1e-4, 1 - 1e-4))


class _Logit:
    """A logistic regression of a 0..1 target (fractional scores as weighted 0/1 rows); a
    constant where the target does not vary."""

    def __init__(self, c: float) -> None:
        self.c = c
        self.model: LogisticRegression | None = None
        self.constant = 0.5

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Logit:
        y = np.clip(np.asarray(y, dtype=float), 0.0, 1.0)
        self.constant = float(y.mean()) if y.size else 0.5
        if y.size < 10 or np.ptp(y) == 0:
            return self
        xx = np.vstack([x, x])
        yy = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
        weight = np.concatenate([y, 1.0 - y])
        keep = weight > 0
        self.model = LogisticRegression(C=self.c).fit(xx[keep], yy[keep], sample_weight=weight[keep])
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(x.shape[0], self.constant)
        return self.model.predict_proba(x)[:, 1]
