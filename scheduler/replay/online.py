"""Online replay: learn from bandit feedback while routing, and measure regret against the oracle.

Arrivals come in windows; each learning policy scores a window with its *current* predictor,
the real optimizer picks one model per job (mean p >= one fixed alpha), and only the chosen
model's outcome is revealed and added to that policy's history (nan elsewhere). Refits follow
windows (``refit_every``, plus early ones on a cold start), as the tick loads a version between
ticks. Policies: ``switchyard`` (the production learner: least-tried-first ``Exploration`` on a
budgeted share of each window), ``greedy`` (the same without exploration; with
``promise_check_labels`` both add the measured gap between promised and realised success to
alpha), ``static`` (fitted once on the train split), ``best-single``
and ``oracle`` (the optimizer on realised outcomes). Score regret sums the successes lost against
the oracle; cost regret the extra USD; both are reported, with regret *rates* over the first and
last quarter of the stream to show convergence. ``--online`` starts from the train split,
``--cold`` from nothing (p = Beta-smoothed mean of what a model has shown, 0.5 untried).

The full description, the definitions and the results are in docs/replay-online.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scheduler.datasets.costing import (
    DEFAULT_ASSUMED_OUTPUT_TOKENS,
    OutcomeMatrix,
    price_arrays,
    realised_cost_usd,
)
from scheduler.datasets.records import OutcomeDataset, Split
from scheduler.learning.exploration import NOT_PINNED, Exploration, promise_gap, restrict_to_pinned
from scheduler.predictor import Predictor, PredictorError, make_predictor
from scheduler.replay import policies as pol
from scheduler.replay.costs import decision_cost_usd
from scheduler.replay.online_report import OnlinePolicy, OnlineReport, WindowRow, regret_rates
from scheduler.replay.runner import Progress, ReplayError

EXPLORING, GREEDY, STATIC, BEST_SINGLE, ORACLE = "switchyard", "greedy", "static", "best-single", "oracle"
TARGET_REFITS = 8           # auto refit_every: about this many scheduled refits over the stream


@dataclass(frozen=True)
class OnlineConfig:
    alpha: float | None = None          # None: midpoint of the cheapest and the best single model's quality
    window: int = 50
    refit_every: int = 0                # windows between refits; 0: auto (about TARGET_REFITS over the stream)
    predictor: str = "linear"
    cold: bool = False
    stream: str = "test"                # "test" | "all" (train + test complete rows; --cold only)
    exploration: Exploration = field(default_factory=Exploration)
    promise_check_labels: int = 0       # recent labels whose promised-vs-realised gap is added to alpha (0 = off)
    prior_p: float = 0.5
    min_model_labels: int = 10          # a model is fitted once it has this many labels
    min_fit_labels: int = 20            # no fit before this many labels in all
    solver: pol.SolverChoice = field(default_factory=pol.SolverChoice)
    assumed_output_tokens: float = DEFAULT_ASSUMED_OUTPUT_TOKENS
    use_tasks: bool = True
    shuffle: bool = True
    seed: int = 0
    include_static: bool = True


def default_alpha(single_quality: np.ndarray, single_cost: np.ndarray, step: float = 0.005) -> float:
    """Midpoint of the cheapest single model's quality and the best single model's, on the step grid."""
    cheap = float(single_quality[int(np.argmin(single_cost))])
    best = float(single_quality.max())
    return round(round((cheap + best) / 2.0 / step) * step, 4)


def auto_refit_every(n_windows: int) -> int:
    return max(1, math.ceil(n_windows / TARGET_REFITS))


class OnlineLearner:
    """One learning policy: a labelled history that grows by bandit feedback, and its predictor."""

    def __init__(self, name: str, config: OnlineConfig, models: list[str], prices: dict,
                 initial: OutcomeMatrix | None, stream: OutcomeMatrix, real_cost: np.ndarray,
                 exploration: Exploration | None) -> None:
        self.name = name
        self.config = config
        self.models = models
        self.prices = prices
        self.stream = stream
        self.real_cost = real_cost
        self.exploration = exploration
        self._rng = np.random.default_rng(config.seed)
        self.promised: list[float] = []   # p of the chosen model, per revealed stream job
        self.realised: list[float] = []   # its score
        m = len(models)
        n0 = 0 if initial is None else len(initial.ids)
        cap = n0 + len(stream.ids)
        self.prompts: list[str] = [] if initial is None else list(initial.prompts)
        self.tasks: list[str] = [] if initial is None else list(initial.tasks)
        self.ids: list[str] = [] if initial is None else list(initial.ids)
        self.scores = np.full((cap, m), np.nan)
        self.cost = np.full((cap, m), np.nan)
        self.tokens = np.full((cap, m), np.nan)
        self.prompt_tokens = np.zeros(cap)
        if initial is not None:
            self.scores[:n0], self.tokens[:n0], self.prompt_tokens[:n0] = initial.scores, initial.output_tokens, initial.prompt_tokens
            self.cost[:n0] = realised_cost_usd(initial, prices, config.assumed_output_tokens)
            self.cost[:n0][np.isnan(initial.scores)] = np.nan
        self.n0 = n0                # rows of the starting history (the warm start's train split)
        self.n = n0
        self.n_at_fit = 0
        self.predictor: Predictor | None = None
        self.fitted_cols: list[int] = []
        self.fits = 0
        self.fit_s = 0.0
        self.last_fit_error: str | None = None

    # -- predictions -------------------------------------------------------------------------
    def _history(self) -> OutcomeMatrix:
        n = self.n
        return OutcomeMatrix(self.ids, self.prompts, self.tasks, self.models, self.scores[:n], self.cost[:n],
                             self.tokens[:n], self.prompt_tokens[:n])

    def predict(self, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """(p, expected output tokens), each (W, M), for the stream rows ``sl``."""
        rows = range(sl.start, sl.stop)
        w = len(rows)
        seen = ~np.isnan(self.scores[:self.n])
        labels = seen.sum(axis=0)
        means = (np.nansum(self.scores[:self.n], axis=0) + self.config.prior_p) / (labels + 1.0)
        p = np.tile(means, (w, 1))
        has_tok = ~np.isnan(self.tokens[:self.n])
        tok_n = has_tok.sum(axis=0)
        tok = np.where(tok_n > 0, np.where(has_tok, self.tokens[:self.n], 0.0).sum(axis=0) / np.maximum(tok_n, 1),
                       self.config.assumed_output_tokens)
        tokens = np.tile(tok, (w, 1))
        if self.predictor is not None and w:
            tasks = [self.stream.tasks[i] for i in rows] if self.config.use_tasks else None
            pred = self.predictor.predict([self.stream.prompts[i] for i in rows], tasks=tasks)
            p[:, self.fitted_cols] = pred.p_success
            if pred.output_tokens is not None:
                tokens[:, self.fitted_cols] = np.where(np.isnan(pred.output_tokens), tokens[:, self.fitted_cols],
                                                       pred.output_tokens)
        return p, tokens

    def margin(self) -> float:
        """The promise check, as the tick runs it: the recent gap between promised and realised."""
        k = self.config.promise_check_labels
        if k <= 0 or self.name == STATIC:
            return 0.0
        return promise_gap(self.promised[-k:], self.realised[-k:])

    def decide(self, sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Chosen model per job of the window, the predicted p of each choice, which jobs were
        pinned to explore (bool), and the promise margin used."""
        p, tokens = self.predict(sl)
        window = self.stream.subset(np.arange(sl.start, sl.stop))
        cost = decision_cost_usd(window, self._history(), self.prices, tokens, self.config.assumed_output_tokens)
        eligible = np.ones(p.shape, dtype=bool)
        pinned = np.full(len(p), NOT_PINNED)
        if self.exploration is not None:
            # as the tick counts: every label the learner holds, imported (warm start) or gathered online
            pinned = self.exploration.pin(eligible, self.label_counts(0).tolist(), self._rng)
            eligible = restrict_to_pinned(eligible, pinned)
        assert self.config.alpha is not None
        margin = self.margin()
        pick = pol.ilp_policy(p, cost, min(1.0, self.config.alpha + margin), len(p), self.config.solver, eligible)
        return pick, p[np.arange(len(pick)), pick], pinned != NOT_PINNED, margin

    def label_counts(self, since_row: int) -> np.ndarray:
        """Observed outcomes per model in the history from row ``since_row`` on (``self.n0``: online only)."""
        return (~np.isnan(self.scores[since_row:self.n])).sum(axis=0)

    # -- feedback ----------------------------------------------------------------------------
    def reveal(self, sl: slice, pick: np.ndarray, promised: np.ndarray, explored: np.ndarray) -> None:
        """Append the window's jobs with only the chosen model's outcome observed."""
        # The promise is the optimizer's: exploring jobs were sent where p is least known, not promised.
        chosen = ~explored
        self.promised.extend(promised[chosen].tolist())
        self.realised.extend(self.stream.scores[np.arange(sl.start, sl.stop), pick][chosen].tolist())
        for k, i in enumerate(range(sl.start, sl.stop)):
            j = int(pick[k])
            r = self.n
            self.ids.append(self.stream.ids[i])
            self.prompts.append(self.stream.prompts[i])
            self.tasks.append(self.stream.tasks[i])
            self.prompt_tokens[r] = self.stream.prompt_tokens[i]
            self.scores[r, j] = self.stream.scores[i, j]
            self.cost[r, j] = self.real_cost[i, j]
            self.tokens[r, j] = self.stream.output_tokens[i, j]
            self.n += 1

    def adopt(self, other: OnlineLearner) -> None:
        """Start from ``other``'s fitted predictor (fitted on the same starting history)."""
        self.predictor, self.fitted_cols, self.n_at_fit = other.predictor, list(other.fitted_cols), other.n_at_fit
        self.fits += 1

    def refit(self) -> bool:
        """Fit the predictor on the history's models with enough labels; False if it cannot yet."""
        n = self.n
        labels = (~np.isnan(self.scores[:n])).sum(axis=0)
        cols = [j for j in range(len(self.models)) if labels[j] >= self.config.min_model_labels]
        if labels.sum() < self.config.min_fit_labels or not cols or n < 2:
            return False
        rows = np.flatnonzero((~np.isnan(self.scores[:n][:, cols])).any(axis=1))
        start = time.perf_counter()
        try:
            self.predictor = make_predictor(self.config.predictor).fit(
                [self.prompts[i] for i in rows], self.scores[rows][:, cols], self.tokens[rows][:, cols],
                [self.models[j] for j in cols],
                tasks=[self.tasks[i] for i in rows] if self.config.use_tasks else None)
            self.fitted_cols = cols
        except PredictorError as exc:     # keep the previous predictor (as the production learner does)
            self.last_fit_error = str(exc)
            return False
        finally:
            self.fit_s += time.perf_counter() - start
        self.fits += 1
        self.n_at_fit = n
        return True


def _stream_matrices(dataset: OutcomeDataset, config: OnlineConfig) -> tuple[OutcomeMatrix | None, OutcomeMatrix, int]:
    models = dataset.models
    train = OutcomeMatrix.from_records(dataset.split(Split.TRAIN), models)
    test = OutcomeMatrix.from_records(dataset.split(Split.TEST), models)
    if config.stream == "all":
        if not config.cold:
            raise ReplayError("stream 'all' (train + test as arrivals) needs --cold: warm starts learn from train")
        both = OutcomeMatrix.from_records([*dataset.split(Split.TRAIN), *dataset.split(Split.TEST)], models)
        complete = both.complete_rows()
        return None, both.subset(complete), int((~complete).sum())
    if config.stream != "test":
        raise ReplayError(f"unknown stream {config.stream!r}; use 'test' or 'all'")
    complete = test.complete_rows()
    if not complete.any():
        raise ReplayError(f"{dataset.name}: no test record has an outcome for every model")
    return train, test.subset(complete), int((~complete).sum())


def run_online(dataset: OutcomeDataset, config: OnlineConfig, progress: Progress | None = None) -> OnlineReport:
    """Replay ``dataset`` as a stream with bandit feedback (see the module doc)."""
    t0 = time.perf_counter()
    if config.window < 1:
        raise ReplayError("window must be >= 1")
    train, stream_all, dropped = _stream_matrices(dataset, config)
    models = list(stream_all.models)
    n, m = stream_all.scores.shape
    order = np.random.default_rng(config.seed).permutation(n) if config.shuffle else np.arange(n)
    stream = stream_all.subset(order)
    scores = stream.scores
    real_cost = realised_cost_usd(stream, dataset.prices, config.assumed_output_tokens)
    rows = np.arange(n)

    single_q, single_c = scores.mean(axis=0), real_cost.sum(axis=0)
    alpha = config.alpha if config.alpha is not None else default_alpha(single_q, single_c)
    alpha_rule = "given" if config.alpha is not None else "midpoint of the cheapest and the best single model's quality"
    jb = pol.best_single_model(single_q, single_c)
    meets = np.flatnonzero(single_q >= alpha - 1e-12)
    js = int(meets[np.argmin(single_c[meets])]) if meets.size else jb
    best_cost_per_job = real_cost[:, jb]

    windows = [slice(s, min(s + config.window, n)) for s in range(0, n, config.window)]
    refit_every = config.refit_every or auto_refit_every(len(windows))
    cfg = replace(config, alpha=alpha)
    initial = None if config.cold else train
    pin, pout = price_arrays(models, dataset.prices)
    unpriced = [models[j] for j in np.flatnonzero(np.isnan(pin) | np.isnan(pout))]
    if config.cold and unpriced:
        raise ReplayError(f"--cold needs list prices for every model (no training costs to fall back on): {unpriced}")
    if initial is not None and len(initial.ids) < 10:
        raise ReplayError(f"{dataset.name}: too few train records ({len(initial.ids)}) for a warm start; use --cold")

    learners = [
        OnlineLearner(EXPLORING, cfg, models, dataset.prices, initial, stream, real_cost, config.exploration),
        OnlineLearner(GREEDY, cfg, models, dataset.prices, initial, stream, real_cost, None),
    ]
    static: OnlineLearner | None = None
    if config.include_static and train is not None and len(train.ids) >= 10:
        static = OnlineLearner(STATIC, cfg, models, dataset.prices, train, stream, real_cost, None)
    total_steps = len(windows) + 1
    if progress is not None:
        progress("fitting the starting predictors", 0, total_steps)
    picks: dict[str, np.ndarray] = {name: np.empty(n, dtype=np.int64) for name in (EXPLORING, GREEDY, ORACLE, BEST_SINGLE)}
    picks[BEST_SINGLE][:] = js
    if static is not None:
        picks[STATIC] = np.empty(n, dtype=np.int64)
    extra: dict[str, list[dict[str, Any]]] = {name: [] for name in picks}
    elapsed: dict[str, float] = {name: 0.0 for name in picks}
    for learner in [*learners, *([static] if static else [])]:
        start = time.perf_counter()
        if learner is learners[0] or initial is None:
            learner.refit()
        else:   # same starting history as the first: share its (immutable once fitted) predictor
            learner.adopt(learners[0])
        elapsed[learner.name] += time.perf_counter() - start
    for w, sl in enumerate(windows):
        start = time.perf_counter()
        picks[ORACLE][sl] = pol.ilp_policy(scores[sl], real_cost[sl], alpha, sl.stop - sl.start, config.solver)
        elapsed[ORACLE] += time.perf_counter() - start
        for learner in [*learners, *([static] if static else [])]:
            start = time.perf_counter()
            pick, p_chosen, explored, margin = learner.decide(sl)
            picks[learner.name][sl] = pick
            refit = False
            if learner is not static:
                learner.reveal(sl, pick, p_chosen, explored)
                due = (w + 1) % refit_every == 0
                early = config.cold and learner.n >= 2 * max(learner.n_at_fit, config.min_fit_labels // 2)
                if (due or early or learner.predictor is None or _new_model_ready(learner)) and w + 1 < len(windows):
                    refit = learner.refit()
            extra[learner.name].append({"explored": int(explored.sum()), "mean_p_chosen": float(p_chosen.mean()),
                                        "margin": margin, "refit": refit})
            elapsed[learner.name] += time.perf_counter() - start
        if progress is not None:
            progress(f"window {w + 1}/{len(windows)}", w + 2, total_steps)

    oracle_s, oracle_c = scores[rows, picks[ORACLE]], real_cost[rows, picks[ORACLE]]
    cum_best = np.cumsum(best_cost_per_job)
    policies: dict[str, OnlinePolicy] = {}
    for name, pick in picks.items():
        s, c = scores[rows, pick], real_cost[rows, pick]
        rs, rc = np.cumsum(oracle_s - s), np.cumsum(c - oracle_c)
        wrows = []
        for w, sl in enumerate(windows):
            e = sl.stop - 1
            info = extra[name][w] if extra[name] else {}
            wrows.append(WindowRow(
                end=sl.stop, quality=float(s[sl].mean()), cost_usd=float(c[sl].sum()),
                cum_score_regret=float(rs[e]), cum_cost_regret_usd=float(rc[e]),
                cum_cost_regret_share=float(rc[e] / cum_best[e]) if cum_best[e] > 0 else 0.0,
                explored=int(info.get("explored", 0)), mean_p_chosen=info.get("mean_p_chosen"),
                margin=float(info.get("margin", 0.0)),
                refit=bool(info.get("refit", False))))
        owner = next((lr for lr in [*learners, *([static] if static else [])] if lr.name == name), None)
        policies[name] = OnlinePolicy(
            quality=float(s.mean()), cost_usd=float(c.sum()),
            cost_share_of_best=float(c.sum() / single_c[jb]) if single_c[jb] > 0 else float("inf"),
            score_regret=float(rs[-1]), cost_regret_usd=float(rc[-1]),
            cost_regret_share=float(rc[-1] / cum_best[-1]) if cum_best[-1] > 0 else 0.0,
            shortfall=float(alpha * n - s.sum()),
            rate_first_quarter=regret_rates(oracle_s - s, c - oracle_c, best_cost_per_job, 0, max(1, n // 4)),
            rate_last_quarter=regret_rates(oracle_s - s, c - oracle_c, best_cost_per_job, n - max(1, n // 4), n),
            jobs_per_model={models[j]: int((pick == j).sum()) for j in range(m)},
            windows=wrows,
            fits=owner.fits if owner else 0, fit_s=owner.fit_s if owner else 0.0,
            total_s=elapsed[name],
        )
    report = OnlineReport(
        dataset=dataset.name, mode="cold" if config.cold else "online", stream=config.stream, n_stream=n,
        n_history_initial=0 if initial is None else len(initial.ids), alpha=alpha, alpha_rule=alpha_rule,
        window=config.window, refit_every=refit_every, predictor=config.predictor,
        exploration={"budget_fraction": config.exploration.budget_fraction,
                     "target_labels": config.exploration.target_labels},
        promise_check_labels=config.promise_check_labels,
        models=models,
        best_single={"model": models[jb], "quality": float(single_q[jb]), "cost_usd": float(single_c[jb]),
                     "fixed_arm": models[js], "fixed_arm_quality": float(single_q[js])},
        policies=policies,
    )
    report.details = {
        "stream_rows_dropped_incomplete": dropped,
        "arrival_order": "seeded shuffle" if config.shuffle else "file order",
        "seed": config.seed,
        "use_tasks": config.use_tasks,
        "solver": vars(config.solver),
        "prior_p": config.prior_p,
        "min_model_labels": config.min_model_labels,
        "min_fit_labels": config.min_fit_labels,
        "single_quality": dict(zip(models, single_q.tolist())),
        "single_cost_usd": dict(zip(models, single_c.tolist())),
        "label_counts_online": {lr.name: dict(zip(models, lr.label_counts(lr.n0).tolist())) for lr in learners},
        "last_fit_error": {lr.name: lr.last_fit_error for lr in learners if lr.last_fit_error},
        "total_s": time.perf_counter() - t0,
    }
    return report


def _new_model_ready(learner: OnlineLearner) -> bool:
    """A model crossed min_model_labels since the last fit: fit it in rather than wait for the schedule."""
    labels = (~np.isnan(learner.scores[:learner.n])).sum(axis=0)
    ready = {j for j in range(len(learner.models)) if labels[j] >= learner.config.min_model_labels}
    return bool(ready - set(learner.fitted_cols)) and learner.n >= learner.config.min_fit_labels


def run_online_repeats(dataset: OutcomeDataset, config: OnlineConfig, repeats: int,
                       progress: Progress | None = None) -> list[OnlineReport]:
    """``repeats`` runs with seeds seed, seed + 1, ...: each its own arrival order and exploration draws."""
    reports = []
    for r in range(repeats):
        cfg = replace(config, seed=config.seed + r)

        def say(message: str, done: int, total: int, r: int = r) -> None:
            if progress is not None:
                progress(f"seed {r + 1}/{repeats}: {message}", r * total + done, repeats * total)

        reports.append(run_online(dataset, cfg, say))
    return reports
