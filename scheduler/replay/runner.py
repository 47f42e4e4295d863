"""Replay: fit on the train split, route the test split through predictor + optimizer, score it.

Test jobs arrive in a seeded random order (logs are often sorted by task, which no real arrival
stream is) and are routed in windows of ``window`` jobs. Policies see only predictions and
decision costs (:mod:`scheduler.replay.costs`); realised scores and costs are used to score them.
Test rows where some model was not observed cannot be scored for every policy and are dropped
(counted in ``details``).

The ``switchyard`` curve is the production decision: each window is one
``OptimizingPolicy.plan`` call on a simulated fleet (:mod:`scheduler.replay.simulated_fleet`).
The oracles and ECCOS's ILP are baselines, not product claims: they call the optimizer directly
through :func:`scheduler.replay.policies.ilp_policy`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from scheduler.datasets.costing import DEFAULT_ASSUMED_OUTPUT_TOKENS, OutcomeMatrix, realised_cost_usd
from scheduler.datasets.records import OutcomeDataset, Split
from scheduler.errors import InvalidRequest
from scheduler.predictor import Prediction, Predictor, calibration_report
from scheduler.replay import policies as pol
from scheduler.replay.cascade_replay import CascadeFit, fit_cascade, run_plans
from scheduler.replay.costs import decision_cost_usd
from scheduler.replay.frontier import DEFAULT_REFINE_STEPS, refine_reach_best
from scheduler.replay.margin import DEFAULT_Z, SafetyMargin, cross_validated_bias
from scheduler.replay.simulated_fleet import PolicyRouter, fleet_predictions, production_fit, simulated_fleet
from scheduler.replay.report import BestSingle, PolicyPoint, ReplayReport, make_point

Progress = Callable[[str, int, int], None]   # (what is running now, steps done, steps in all)


class ReplayError(InvalidRequest):
    """The dataset cannot be replayed."""


@dataclass(frozen=True)
class ReplayConfig:
    alphas: tuple[float, ...] | None = None   # None: sweep (see sweep_alphas)
    window: int = 256
    predictor: str = "switchyard"
    solver: pol.SolverChoice = field(default_factory=pol.SolverChoice)      # ours and the oracle
    eccos_solver: pol.SolverChoice = field(default_factory=lambda: pol.SolverChoice("exact", "cbc"))
    assumed_output_tokens: float = DEFAULT_ASSUMED_OUTPUT_TOKENS
    margin: str = "cv"        # "cv": CV bias + noise term; "noise": noise term only; "none"
    confidence_z: float = DEFAULT_Z
    cv_folds: int = 3
    use_tasks: bool = True    # give the predictors each job's task label (ECCOS-R ignores it)
    shuffle: bool = True
    seed: int = 0
    refine_steps: int = DEFAULT_REFINE_STEPS   # bisection steps where a curve first reaches the best model (frontier.py)
    cascade: bool = False     # add the switchyard-cascade curve (needs logged answers; cascade_replay.py)
    posthoc: str = "posthoc"  # the post-hoc estimator the cascade reads answers with


ALPHA_STEP = 0.005


def sweep_alphas(single_qualities: Sequence[float], oracle_quality: float, step: float = ALPHA_STEP) -> list[float]:
    """Alphas from the worst single model's quality to the oracle's, plus the best model's exactly."""
    lo = np.floor(min(single_qualities) / step) * step
    grid = np.arange(lo, oracle_quality + 1e-9, step)
    return sorted({round(float(a), 4) for a in grid} | {round(float(max(single_qualities)), 4)})


def split_matrices(dataset: OutcomeDataset) -> tuple[OutcomeMatrix, OutcomeMatrix, int]:
    """(train, the test rows observed on every model, how many test rows were dropped)."""
    models = dataset.models
    train = OutcomeMatrix.from_records(dataset.split(Split.TRAIN), models)
    test_all = OutcomeMatrix.from_records(dataset.split(Split.TEST), models)
    complete = test_all.complete_rows()
    if not complete.any():
        raise ReplayError(f"{dataset.name}: no test record has an outcome for every model")
    if len(train.ids) < 10:
        raise ReplayError(f"{dataset.name}: too few train records ({len(train.ids)}) to fit a predictor")
    return train, test_all.subset(complete), int((~complete).sum())


def run_replay(dataset: OutcomeDataset, config: ReplayConfig, progress: Progress | None = None) -> ReplayReport:
    """Run every policy on ``dataset``'s test split and return the report (see module doc)."""
    t0 = time.perf_counter()
    train, test, dropped = split_matrices(dataset)
    if config.cascade and (train.responses is None or test.responses is None):
        raise ReplayError(f"{dataset.name} logs no answers (outcomes[MODEL].response): there is no cascade to "
                          "replay (--cascade needs them; RouterBench and RouteLLM GSM8K have them)")
    n, m = test.scores.shape
    order = np.random.default_rng(config.seed).permutation(n) if config.shuffle else np.arange(n)
    scores = test.scores[order]
    real_cost = realised_cost_usd(test, dataset.prices, config.assumed_output_tokens)[order]
    rows = np.arange(n)

    single_q = scores.mean(axis=0)
    single_c = real_cost.sum(axis=0)
    jb = pol.best_single_model(single_q, single_c)
    best = BestSingle(test.models[jb], float(single_q[jb]), float(single_c[jb]))
    oracle_pick = pol.oracle_best(scores, real_cost)
    oracle_q = float(scores[rows, oracle_pick].mean())
    alphas = list(config.alphas) if config.alphas else sweep_alphas(single_q.tolist(), oracle_q)
    total_steps = 2 + len(alphas) + int(config.cascade)
    done = 0

    def say(message: str, advance: int = 0) -> None:
        nonlocal done
        done += advance
        if progress is not None:
            progress(message, done, total_steps)

    say("fitting predictors on the train split")
    fits: dict[str, Predictor] = {}
    preds: dict[str, Prediction] = {}
    fit_s: dict[str, float] = {}
    fleet = simulated_fleet(test.models, dataset.prices, train, config.window)
    for name in (config.predictor, "eccos-r"):
        start = time.perf_counter()
        # Ours is fitted under the simulated fleet's names, as production fits under the fleet's.
        fits[name] = production_fit(name, train, config.use_tasks,
                                    model_names=fleet.names if name == config.predictor else None)
        preds[name] = fits[name].predict(
            [test.prompts[i] for i in order], tasks=[test.tasks[i] for i in order] if config.use_tasks else None,
        )
        fit_s[name] = time.perf_counter() - start
    eccos = preds["eccos-r"]
    test_perm = test.subset(order)
    cost_eccos = decision_cost_usd(test_perm, train, dataset.prices, eccos.output_tokens, config.assumed_output_tokens)
    say("predictors fitted", 1)

    def point(alpha: float | None, pick: np.ndarray) -> PolicyPoint:
        return make_point(alpha, float(scores[rows, pick].mean()), float(real_cost[rows, pick].sum()), best.cost_usd)

    policies: dict[str, list[PolicyPoint]] = {
        name: [make_point(None, float(single_q[j]), float(single_c[j]), best.cost_usd)]
        for j, name in enumerate(test.models)
    }
    policies["random"] = [point(None, pol.random_policy(n, m, config.seed))]
    policies["oracle"] = [point(None, oracle_pick)]

    margin = SafetyMargin(0.0, config.confidence_z if config.margin != "none" else 0.0, n)
    if config.margin == "cv":
        say("estimating the safety margin by cross-validation on train")
        bias = cross_validated_bias(
            train, dataset.prices, config.predictor, window=config.window, solver=config.solver,
            assumed_output_tokens=config.assumed_output_tokens, folds=config.cv_folds, seed=config.seed,
            use_tasks=config.use_tasks,
        )
        margin = SafetyMargin(bias, config.confidence_z, n)
    say("routing the test split", 1)

    tasks_in_order = [test.tasks[i] for i in order]
    test_task_rates = pol.task_rates(scores, tasks_in_order)
    # Ours is the production policy on a simulated fleet (simulated_fleet.py); the oracles and
    # ECCOS's ILP are baselines and call the optimizer directly (policies.ilp_policy).
    # What the tick's policy sees: the production FleetPredictor over our fit (its prior blend included).
    ours_p, ours_tokens = fleet_predictions(fleet, fits[config.predictor], test_perm.ids, test_perm.prompts,
                                            tasks_in_order if config.use_tasks else None, config.assumed_output_tokens)
    production = PolicyRouter(fleet, test_perm.ids, test_perm.prompts, ours_p, ours_tokens, config.solver,
                              config.window)
    routers: dict[str, Callable[[float], np.ndarray]] = {   # alpha -> chosen model per job
        "oracle": lambda a: pol.ilp_policy(scores, real_cost, a, config.window, config.solver),
        "task-oracle": lambda a: pol.ilp_policy(test_task_rates, real_cost, a, config.window, config.solver),
        "eccos-r-rule": lambda a: pol.eccos_rule(eccos.p_success, cost_eccos, a),
        "eccos-ilp": lambda a: pol.ilp_policy(eccos.p_success, cost_eccos, a, config.window, config.eccos_solver),
        "switchyard": lambda a: production.route(min(a + margin(a), 1.0)),
    }

    def curve(evaluate: Callable[[float], PolicyPoint]) -> Callable[[float], PolicyPoint]:
        """The policy's point at an alpha, each alpha routed once (the two bisections may share)."""
        routed: dict[float, PolicyPoint] = {}

        def at_alpha(alpha: float) -> PolicyPoint:
            if alpha not in routed:
                routed[alpha] = evaluate(alpha)
            return routed[alpha]
        return at_alpha

    def routed_by(route: Callable[[float], np.ndarray]) -> Callable[[float], PolicyPoint]:
        return lambda alpha: point(alpha, route(alpha))

    curves = {name: curve(routed_by(route)) for name, route in routers.items()}
    cascade_stats: dict[float, dict[str, float]] = {}
    cascade: CascadeFit | None = None
    if config.cascade:
        say("fitting the cascade model on train (ex-ante and post-hoc cross-fits)")
        observed_cost = np.where(np.isnan(train.scores), np.nan,
                                 realised_cost_usd(train, dataset.prices, config.assumed_output_tokens))
        cascade = fit_cascade(train, test_perm, ours_p, config.predictor, np.nanmean(observed_cost, axis=0),
                              use_tasks=config.use_tasks, folds=config.cv_folds, seed=config.seed,
                              posthoc=config.posthoc)
        cascading = PolicyRouter(production.fleet, test_perm.ids, test_perm.prompts, ours_p, ours_tokens,
                                 config.solver, config.window, cascade=cascade.model)
        fitted = cascade

        def cascade_point(alpha: float) -> PolicyPoint:
            plans = cascading.plans(min(alpha + margin(alpha), 1.0))
            run = run_plans(plans, test_perm.ids, cascading.column, fitted.test, scores, real_cost)
            cascade_stats[alpha] = run.summary()
            return make_point(alpha, float(run.score.mean()), float(run.cost_usd.sum()), best.cost_usd)

        curves["switchyard-cascade"] = curve(cascade_point)
        say("cascade model fitted", 1)
    if config.refine_steps:
        total_steps += len(curves)
    for name in curves:
        policies.setdefault(name, [])
    for alpha in alphas:
        for name, at_alpha in curves.items():
            policies[name].append(at_alpha(alpha))
        say(f"alpha {alpha:.3f}", 1)
    if config.refine_steps:
        for name, at_alpha in curves.items():
            policies[name] += refine_reach_best(at_alpha, policies[name], best.quality, config.refine_steps)
            policies[name].sort(key=lambda p: -1.0 if p.alpha is None else p.alpha)
            say(f"bisecting where {name} reaches the best model", 1)

    report = ReplayReport(
        dataset=dataset.name, n_train=len(train.ids), n_test=n, best_single=best, policies=policies,
    )
    report.summarise(list(test.models), judged_alphas=alphas)
    report.details = {
        "predictor": config.predictor,
        "predictor_params": _jsonable(fits[config.predictor].params()),
        "window": config.window,
        "sweep_step": None if config.alphas else ALPHA_STEP,
        "refine_steps": config.refine_steps,
        "use_tasks": config.use_tasks,
        "solver": vars(config.solver),
        "eccos_solver": vars(config.eccos_solver),
        "margin": {"mode": config.margin, "cv_bias": margin.bias, "z": margin.z, "horizon_jobs": n},
        "test_rows_dropped_incomplete": dropped,
        "arrival_order": "seeded shuffle" if config.shuffle else "file order",
        "seed": config.seed,
        "calibration_test": {
            name: calibration_report(preds[name].p_success, scores, test.models, tasks=tasks_in_order) for name in fits
        },
        "fit_and_predict_s": fit_s,
        "total_s": time.perf_counter() - t0,
    }
    if cascade is not None:
        report.details["cascade"] = _cascade_details(report, cascade, cascade_stats)
    # Models run per job and share escalated, at the point a policy is judged by (1 and 0 unless
    # it cascades): for cascade policies these are what its figures cost in extra model runs.
    single_run = {"models_run_per_job": 1.0, "share_escalated": 0.0}
    report.details["models_run_at_reach_best"] = {name: dict(single_run) for name in report.policies}
    if cascade is not None:
        report.details["models_run_at_reach_best"]["switchyard-cascade"] = report.details["cascade"]["at_reach_best"]
    return report


def _headline_alpha(report: ReplayReport, name: str) -> float | None:
    """The alpha of the point where ``name``'s curve reaches the best model most cheaply, or of
    its highest-quality point if it never does."""
    points = report.policies[name]
    reach = report.reach_best.get(name)
    hits = [p for p in points if reach is not None and p.cost_share_of_best == reach]
    if not hits:
        hits = sorted(points, key=lambda p: (-p.quality, p.cost_usd))
    return hits[0].alpha if hits else None


def _cascade_details(report: ReplayReport, cascade: CascadeFit, stats: dict[float, dict[str, float]]
                     ) -> dict[str, object]:
    return {
        "fit_s": cascade.fit_s,
        "strategies": len(cascade.model.strategies),
        "candidates": cascade.model.candidates_,
        "thresholds": list(cascade.model.thresholds),
        "offered": [{"strategy": cascade.model.describe(s), "train_mean_cost_usd": c, "train_quality": q}
                    for s, (c, q) in enumerate(cascade.model.train_means_)],
        "margin": "the switchyard curve's (CV bias of direct routing + noise)",
        "points": [{"alpha": a, **stats[a]} for a in sorted(stats)],
        "at_reach_best": stats.get(_headline_alpha(report, "switchyard-cascade") or -1.0),
    }


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
