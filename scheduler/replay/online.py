"""Online replay: learn from bandit feedback while routing, and measure regret against the oracle.

Arrivals come in windows. Each learning policy decides a window as the tick does: one call of the
production ``scheduler.policy.OptimizingPolicy.plan`` on a simulated fleet
(:mod:`scheduler.replay.simulated_fleet`: ample capacity, every job placed, one batch at alpha),
with the production ``FleetPredictor`` over its current fitted version (fleet priors for a model
that version does not know), the production ``Exploration`` and ``Feedback`` (label counts, promise
gap). Only the chosen model's outcome is revealed and appended to that policy's history (nan
elsewhere). Refits use the production fit (``scheduler.learning.learner.fit_predictor``) on the
history and follow windows (``refit_every``, plus early ones on a cold start), as the tick loads a
version between ticks; a failed fit keeps the previous predictor. Policies: ``switchyard`` (with
exploration), ``greedy`` (without; with ``promise_check_labels`` both get the measured gap between
promised and realised success as the promise margin), ``static`` (fitted once on the train split),
and the yardsticks ``best-single`` and ``oracle`` (the optimizer on realised outcomes, called
directly). Score regret sums the successes lost against the oracle; cost regret the extra USD;
both are reported, with regret *rates* over the first and last quarter of the stream to show
convergence. ``--online`` starts from the train split, ``--cold`` from nothing (every model at its
fleet prior until a fit knows it).

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
from scheduler.fleet import Fleet
from scheduler.learning.exploration import Exploration, Feedback, promise_gap
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.learning.learner import fit_predictor
from scheduler.learning.training import TrainingSet
from scheduler.policy import OptimizingPolicy
from scheduler.predictor import Predictor, PredictorError
from scheduler.replay import policies as pol
from scheduler.replay.online_report import OnlinePolicy, OnlineReport, WindowRow, regret_rates
from scheduler.replay.runner import Progress, ReplayError
from scheduler.replay.simulated_fleet import (
    REPLAY_NOW,
    PlannedPicks,
    TaskPredictor,
    ample_states,
    read_plans,
    simulated_fleet,
    window_jobs,
)

EXPLORING, GREEDY, STATIC, BEST_SINGLE, ORACLE = "switchyard", "greedy", "static", "best-single", "oracle"
TARGET_REFITS = 8           # auto refit_every: about this many scheduled refits over the stream
QUALITY_PRIOR = 0.5         # every simulated model's fleet prior (the fleet file's default quality_prior)


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


class LearningPolicy:
    """One learning policy's state: its labelled history (grown by bandit feedback when it
    ``learns``), its fitted predictor, and what the production policy is built from per window."""

    def __init__(self, name: str, config: OnlineConfig, fleet: Fleet, initial: OutcomeMatrix | None,
                 stream: OutcomeMatrix, exploration: Exploration | None, learns: bool = True) -> None:
        self.name = name
        self.config = config
        self.fleet = fleet
        self.stream = stream
        self.exploration = exploration
        self.learns = learns
        self.column = {model: j for j, model in enumerate(fleet.names)}
        self.tasks = dict(zip(stream.ids, stream.tasks, strict=True)) if config.use_tasks else None
        self.rng = np.random.default_rng(config.seed)   # exploration draws, kept across windows
        self.promised: list[float] = []   # p of the chosen model, per revealed non-exploring job
        self.realised: list[float] = []   # its score
        m = len(fleet.models)
        n0 = 0 if initial is None else len(initial.ids)
        cap = n0 + len(stream.ids)
        self.prompts: list[str] = [] if initial is None else list(initial.prompts)
        self.task_labels: list[str] = [] if initial is None else list(initial.tasks)
        self.scores = np.full((cap, m), np.nan)
        self.tokens = np.full((cap, m), np.nan)
        if initial is not None:
            self.scores[:n0], self.tokens[:n0] = initial.scores, initial.output_tokens
        self.n0 = n0                # rows of the starting history (the warm start's train split)
        self.n = n0
        self.n_at_fit = 0
        self.fitted: Predictor | None = None
        self.fitted_models: set[int] = set()   # models with a label at the last fit
        self.fits = 0
        self.fit_s = 0.0
        self.last_fit_error: str | None = None

    def label_counts(self, since_row: int = 0) -> np.ndarray:
        """Observed outcomes per model in the history from row ``since_row`` on (``self.n0``: online only)."""
        return (~np.isnan(self.scores[since_row:self.n])).sum(axis=0)

    def feedback(self) -> Feedback:
        """As the tick reads it: every label the policy holds, imported (warm start) or gathered
        online, and the promise gap of its last ``promise_check_labels`` non-exploring jobs."""
        if not self.learns:
            return Feedback()
        k = self.config.promise_check_labels
        gap = promise_gap(self.promised[-k:], self.realised[-k:]) if k > 0 else 0.0
        return Feedback(tuple(int(c) for c in self.label_counts()), gap)

    def decide(self, sl: slice, alpha: float, window_index: int) -> tuple[PlannedPicks, float]:
        """One ``OptimizingPolicy.plan`` for the stream rows ``sl``: what it assigned each job, and
        the promise margin it planned with."""
        feedback = self.feedback()
        version = f"{self.name}-{self.fits}" if self.fitted is not None else None
        policy = OptimizingPolicy(
            self.fleet, TaskPredictor(FleetPredictor(self.fleet, self.fitted, version), self.tasks,
                                      self.config.assumed_output_tokens),
            exploration=self.exploration, feedback=feedback, rng=self.rng, method=self.config.solver.method,
            backend=self.config.solver.backend, time_limit_s=self.config.solver.time_limit_s)
        ids = self.stream.ids[sl]
        jobs = window_jobs(ids, self.stream.prompts[sl], alpha)
        plan = policy.plan(jobs, ample_states(self.fleet, len(jobs)), REPLAY_NOW, tick_id=f"online-{window_index}")
        return read_plans([plan], ids, self.column), feedback.promise_gap

    def reveal(self, sl: slice, picks: PlannedPicks) -> None:
        """Append the window's jobs with only the chosen model's outcome observed."""
        pick = picks.model
        realised = self.stream.scores[np.arange(sl.start, sl.stop), pick]
        # The promise is the optimizer's: exploring jobs were sent where p is least known, not promised.
        self.promised.extend(picks.p[~picks.exploring].tolist())
        self.realised.extend(realised[~picks.exploring].tolist())
        rows = np.arange(self.n, self.n + len(pick))
        self.prompts.extend(self.stream.prompts[sl])
        self.task_labels.extend(self.stream.tasks[sl])
        self.scores[rows, pick] = realised
        self.tokens[rows, pick] = self.stream.output_tokens[np.arange(sl.start, sl.stop), pick]
        self.n += len(pick)

    def adopt(self, other: LearningPolicy) -> None:
        """Start from ``other``'s fitted predictor (fitted on the same starting history)."""
        self.fitted, self.fitted_models, self.n_at_fit = other.fitted, set(other.fitted_models), other.n_at_fit
        self.fits += 1

    def refit(self) -> bool:
        """The production fit on the history; False (the previous predictor kept) when it fails."""
        n = self.n
        data = TrainingSet(self.prompts[:n], self.scores[:n], self.tokens[:n], list(self.fleet.names),
                           tasks=self.task_labels[:n] if self.config.use_tasks else None)
        start = time.perf_counter()
        try:
            self.fitted = fit_predictor(self.config.predictor, data)
        except PredictorError as exc:     # keep the previous predictor, as the production learner does
            self.last_fit_error = str(exc)
            return False
        finally:
            self.fit_s += time.perf_counter() - start
        self.fits += 1
        self.n_at_fit = n
        self.fitted_models = set(np.flatnonzero(self.label_counts() > 0).tolist())
        return True

    def refit_due(self, windows_done: int, refit_every: int) -> bool:
        """Scheduled every ``refit_every`` windows; on a cold start also whenever the history has
        doubled since the last fit (early fits are cheap and matter most); and as soon as a model
        has a label it did not have at the last fit, or while no fit has succeeded yet."""
        early = self.config.cold and self.n >= 2 * max(self.n_at_fit, 1)
        new_model = bool(set(np.flatnonzero(self.label_counts() > 0).tolist()) - self.fitted_models)
        return windows_done % refit_every == 0 or early or new_model or self.fitted is None


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
    initial = None if config.cold else train
    pin, pout = price_arrays(models, dataset.prices)
    unpriced = [models[j] for j in np.flatnonzero(np.isnan(pin) | np.isnan(pout))]
    if config.cold and unpriced:
        raise ReplayError(f"--cold needs list prices for every model (no training costs to fall back on): {unpriced}")
    if initial is not None and len(initial.ids) < 10:
        raise ReplayError(f"{dataset.name}: too few train records ({len(initial.ids)}) for a warm start; use --cold")
    # Prices from list prices (a warm start: or the train split's logged costs, as offline); a
    # cold start has every list price, so its fleet reads no training row.
    priced_from = initial if initial is not None else stream.subset(np.zeros(n, dtype=bool))
    fleet = simulated_fleet(models, dataset.prices, priced_from, config.window, quality_prior=QUALITY_PRIOR)

    learners = [LearningPolicy(EXPLORING, config, fleet, initial, stream, config.exploration),
                LearningPolicy(GREEDY, config, fleet, initial, stream, None)]
    static: LearningPolicy | None = None
    if config.include_static and train is not None and len(train.ids) >= 10:
        static = LearningPolicy(STATIC, config, fleet, train, stream, None, learns=False)
    deciders = [*learners, *([static] if static else [])]
    total_steps = len(windows) + 1
    if progress is not None:
        progress("fitting the starting predictors", 0, total_steps)
    picks: dict[str, np.ndarray] = {name: np.empty(n, dtype=np.int64) for name in (EXPLORING, GREEDY, ORACLE, BEST_SINGLE)}
    picks[BEST_SINGLE][:] = js
    if static is not None:
        picks[STATIC] = np.empty(n, dtype=np.int64)
    extra: dict[str, list[dict[str, Any]]] = {name: [] for name in picks}
    elapsed: dict[str, float] = {name: 0.0 for name in picks}
    for decider in deciders:
        start = time.perf_counter()
        if initial is not None and decider is not learners[0]:
            decider.adopt(learners[0])   # same starting history: share its (immutable once fitted) predictor
        elif decider.n > 0:              # a cold start has nothing to fit yet: fleet priors
            decider.refit()
        elapsed[decider.name] += time.perf_counter() - start
    for w, sl in enumerate(windows):
        start = time.perf_counter()
        picks[ORACLE][sl] = pol.ilp_policy(scores[sl], real_cost[sl], alpha, sl.stop - sl.start, config.solver)
        elapsed[ORACLE] += time.perf_counter() - start
        for decider in deciders:
            start = time.perf_counter()
            planned, margin = decider.decide(sl, alpha, w)
            picks[decider.name][sl] = planned.model
            refit = False
            if decider.learns:
                decider.reveal(sl, planned)
                if w + 1 < len(windows) and decider.refit_due(w + 1, refit_every):
                    refit = decider.refit()
            extra[decider.name].append({"explored": int(planned.exploring.sum()),
                                        "mean_p_chosen": float(planned.p.mean()), "margin": margin, "refit": refit})
            elapsed[decider.name] += time.perf_counter() - start
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
        owner = next((d for d in deciders if d.name == name), None)
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
        "quality_prior": QUALITY_PRIOR,
        "single_quality": dict(zip(models, single_q.tolist())),
        "single_cost_usd": dict(zip(models, single_c.tolist())),
        "label_counts_online": {lr.name: dict(zip(models, lr.label_counts(lr.n0).tolist())) for lr in learners},
        "last_fit_error": {lr.name: lr.last_fit_error for lr in learners if lr.last_fit_error},
        "total_s": time.perf_counter() - t0,
    }
    return report


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
