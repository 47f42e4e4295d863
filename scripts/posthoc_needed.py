"""How good must the post-hoc estimator be for cascades to reach the best model? (issue 12 evidence)

    python scripts/posthoc_needed.py out/data/routerbench.jsonl [--noise 0.3,0.8,1.2] [--window 256]

The ``switchyard-cascade`` curve of ``switchyard replay --cascade``, with one thing changed: the
post-hoc p of the answers (the cascade fit's out-of-fold p on train, and the judge of the test
answers) comes from a *synthetic* estimator built from the true outcome with noise, the way the
paper the issue cites builds its RouterBench estimators (Dekoninck, Baader, Vechev, ICML 2025;
eth-sri/cascade-routing, ``scripts/routerbench.py`` -> ``GroundTruthQualityComputer`` in
``src/selection/quality_computer.py``). Per (job, model), one draw, fixed for the job:

    noisy = score + sigma * N(0, 1),   p = a_k + b_k * noisy

with (a_k, b_k) the least-squares line of model k's score on its noisy value (the paper fits it
on train and test together; here on train only), no clipping and no logit; the p of an answer
does not depend on the answers beside it (no agreement signal). The paper's post-hoc noise is
sigma = 0.3 / 0.8 / 1.2 at its "low" / "medium" / "high" levels. On a 0/1 score its within-task
ROC-AUC is Phi(1 / (sigma sqrt 2)): 0.99 / 0.81 / 0.72; the table prints the measured one.

Everything else is production, as the replay runs it: the ex-ante predictor fitted on train (read
through the production ``FleetPredictor``, its prior blend included) and its 3-fold out-of-fold p (:func:`scheduler.predictor.posthoc.cross_fit_ex_ante`); the cascade model
fitted by :func:`scheduler.cascade_fit.fit_cascade_model` (given the synthetic judge through its
``posthoc_judge`` parameter); the test windows routed by ``OptimizingPolicy.plan`` on the simulated
fleet (:class:`PolicyRouter`) with the replay's safety margin (CV bias on train + noise term); the
plans executed by :func:`scheduler.replay.cascade_replay.run_plans`. The ``learnt`` row is today's
estimator through the same code (``fit_cascade_model`` and
:func:`scheduler.replay.cascade_replay.posthoc_test_judge`), so its figures are the replay's.

To save time the alpha sweep starts ``--span`` below the best model's quality (extended downward
when its first point already reaches the within-0.01 line) and stops once ``--past`` consecutive
alphas reach the best model (a higher alpha only costs more) or the plans stop changing; the
crossings are then bisected as the replay does (``refine_reach_best``). Columns: the within-task
AUC of the post-hoc p of each model's own answer on test (mean over all models, and over the
three cheapest, whose answers a cascade judges first; GSM8K: Mixtral), reach-best and within-0.01
cost shares, and at the headline point (the cheapest one reaching the best model, else the
highest-quality one) its quality, models run per job and share of jobs escalated. ``--json FILE``
writes the rows. Results: docs/replay.md, "What the RouterBench target needs".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.cascade import Judge  # noqa: E402
from scheduler.cascade_fit import fit_cascade_model  # noqa: E402
from scheduler.datasets import read_dataset  # noqa: E402
from scheduler.datasets.costing import DEFAULT_ASSUMED_OUTPUT_TOKENS, OutcomeMatrix, realised_cost_usd  # noqa: E402
from scheduler.predictor.calibration import within_task_auc  # noqa: E402
from scheduler.predictor.posthoc import cross_fit_ex_ante  # noqa: E402
from scheduler.replay import policies as pol  # noqa: E402
from scheduler.replay.cascade_replay import posthoc_test_judge, run_plans  # noqa: E402
from scheduler.replay.frontier import DEFAULT_REFINE_STEPS, refine_reach_best  # noqa: E402
from scheduler.replay.margin import DEFAULT_Z, SafetyMargin, cross_validated_bias  # noqa: E402
from scheduler.replay.report import ALPHA_TOLERANCE, PolicyPoint, make_point, reach_best  # noqa: E402
from scheduler.replay.runner import ALPHA_STEP, split_matrices, sweep_alphas  # noqa: E402
from scheduler.replay.simulated_fleet import (  # noqa: E402
    PolicyRouter, fleet_predictions, production_fit, simulated_fleet,
)

PAPER_LEVELS = {0.3: "low", 0.8: "medium", 1.2: "high"}   # ground_truth_noise_after in scripts/routerbench.py
NOISE = (0.3, 0.8, 1.2, 2.0)
CHEAP = 3


def noisy_truth(scores: np.ndarray, sigma: float, draws: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """The paper's synthetic post-hoc p: score + sigma * draw, mapped per model by the
    least-squares line of the score on it, fitted on ``fit_rows`` (nan stays nan)."""
    noisy = scores + sigma * draws
    p = np.full(scores.shape, np.nan)
    for k in range(scores.shape[1]):
        seen = fit_rows & ~np.isnan(scores[:, k])
        slope, intercept = np.polyfit(noisy[seen, k], scores[seen, k], 1)
        p[:, k] = intercept + slope * noisy[:, k]
    return p


def array_judge(p: np.ndarray, answered: np.ndarray) -> Judge:
    """A judge that reads p[:, a] whatever the answers beside it (as the paper's estimator does),
    unknown where a's answer or one beside it is missing (as :class:`CrossFittedJudge`)."""
    def judge(a: int, others: tuple[int, ...]) -> np.ndarray:
        out = p[:, a].copy()
        out[~answered[:, [a, *others]].all(axis=1)] = np.nan
        return out
    return judge


def answered(matrix: OutcomeMatrix) -> np.ndarray:
    known = ~np.isnan(matrix.scores)
    if matrix.responses is not None:
        known &= np.vectorize(lambda r: r is not None, otypes=[bool])(matrix.responses)
    return known


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--noise", default=",".join(str(s) for s in NOISE),
                        help="post-hoc noise sigmas (the paper's low/medium/high: 0.3, 0.8, 1.2)")
    parser.add_argument("--no-learnt", action="store_true", help="skip today's estimator's row")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="the arrival order and fits, as the replay's")
    parser.add_argument("--draw", type=int, default=0, help="which draw of the synthetic noise")
    parser.add_argument("--predictor", default="switchyard")
    parser.add_argument("--posthoc", default="posthoc")
    parser.add_argument("--bias", type=float, default=None,
                        help="the margin's CV bias, if already known (else measured on train as the replay does)")
    parser.add_argument("--span", type=float, default=0.04)
    parser.add_argument("--past", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - t0:7.0f}s] {message}", file=sys.stderr, flush=True)

    data = read_dataset(args.dataset)
    train, test, _ = split_matrices(data)
    n, m = test.scores.shape
    order = np.random.default_rng(args.seed).permutation(n)          # the replay's arrival order
    test_perm = test.subset(order)
    scores = test_perm.scores
    real_cost = realised_cost_usd(test_perm, data.prices)
    tasks = list(test_perm.tasks)
    rows = np.arange(n)
    single_q = scores.mean(axis=0)
    best = pol.best_single_model(single_q, real_cost.sum(axis=0))
    best_q, best_cost = float(single_q[best]), float(real_cost[:, best].sum())
    oracle_q = float(scores[rows, pol.oracle_best(scores, real_cost)].mean())
    grid = sweep_alphas(single_q.tolist(), oracle_q)
    observed_cost = np.where(np.isnan(train.scores), np.nan, realised_cost_usd(train, data.prices))
    mean_cost = np.nanmean(observed_cost, axis=0)
    cheap = [int(j) for j in np.argsort(mean_cost, kind="stable")[:min(CHEAP, m - 1)]]   # the answers judged first
    say(f"{data.name}: {len(train.ids)} train / {n} test jobs, best single {test.models[best]} {best_q:.4f}, "
        f"cheapest {[test.models[j] for j in cheap]}")

    say(f"fitting the ex-ante predictor {args.predictor} on train")
    fleet = simulated_fleet(test.models, data.prices, train, args.window)
    # As the replay (runner.py): fitted under the fleet's names, read through the production
    # FleetPredictor, so its blend of each model's p with the fleet prior applies.
    fitted = production_fit(args.predictor, train, True, model_names=fleet.names)
    ours_p, tokens = fleet_predictions(fleet, fitted, test_perm.ids, test_perm.prompts, tasks,
                                       DEFAULT_ASSUMED_OUTPUT_TOKENS)
    bias = args.bias
    if bias is None:
        say("the safety margin's CV bias on train (as the replay)")
        bias = cross_validated_bias(train, data.prices, args.predictor, window=args.window, solver=pol.SolverChoice(),
                                    assumed_output_tokens=DEFAULT_ASSUMED_OUTPUT_TOKENS, seed=args.seed)
    margin = SafetyMargin(bias, DEFAULT_Z, n)
    say(f"margin bias {bias:.4f}; out-of-fold ex-ante p on train (3 folds)")
    oof_ex = cross_fit_ex_ante(args.predictor, train.prompts, train.scores, train.output_tokens, train.models,
                               tasks=train.tasks, seed=args.seed)

    estimators: list[tuple[str, float | None]] = [] if args.no_learnt else [("learnt", None)]
    estimators += [(PAPER_LEVELS.get(s, ""), s) for s in (float(x) for x in args.noise.split(","))]
    draws_train = np.random.default_rng([args.seed, args.draw, 1]).standard_normal(train.scores.shape)
    draws_test = np.random.default_rng([args.seed, args.draw, 2]).standard_normal(scores.shape)
    known_train, known_test = answered(train), answered(test_perm)
    results = []
    for label, sigma in estimators:
        name = "learnt" if sigma is None else f"sigma {sigma:g}" + (f" ({label})" if label else "")
        start = time.perf_counter()
        say(f"{name}: fitting the cascade model on train")
        if sigma is None:
            model, _ = fit_cascade_model(train, args.predictor, mean_cost, use_tasks=True, seed=args.seed,
                                         posthoc=args.posthoc, ex_ante_oof=oof_ex)
            judge: Judge = posthoc_test_judge(train, test_perm, oof_ex, ours_p, use_tasks=True,
                                              seed=args.seed, posthoc=args.posthoc)
        else:
            # the line is fitted on train rows; the same line maps the test draws
            both = np.vstack([train.scores, scores])
            fit_rows = np.r_[np.ones(len(train.ids), bool), np.zeros(n, bool)]
            p = noisy_truth(both, sigma, np.vstack([draws_train, draws_test]), fit_rows)
            model, _ = fit_cascade_model(train, args.predictor, mean_cost, use_tasks=True, seed=args.seed,
                                         ex_ante_oof=oof_ex, posthoc_judge=array_judge(p[:len(train.ids)], known_train))
            judge = array_judge(p[len(train.ids):], known_test)
        auc = [within_task_auc(judge(j, ()), scores[:, j], tasks) for j in range(m)]
        router = PolicyRouter(fleet, test_perm.ids, test_perm.prompts, ours_p, tokens, pol.SolverChoice(),
                              args.window, cascade=model)
        say(f"{name}: {len(model.strategies)} strategies kept of {model.candidates_}; within-task AUC "
            f"{np.nanmean(auc):.3f} (cheapest {np.nanmean([auc[j] for j in cheap]):.3f}); sweeping")
        row = sweep(router, judge, scores, real_cost, grid, best_q, best_cost, margin, args, say)
        row.update(estimator=name, sigma=sigma, auc_within_task=float(np.nanmean(auc)),
                   auc_within_task_cheapest=float(np.nanmean([auc[j] for j in cheap])),
                   auc_by_model={test.models[j]: auc[j] for j in range(m)}, strategies=len(model.strategies),
                   seconds=time.perf_counter() - start)
        results.append(row)
        say(f"{name}: done in {row['seconds']:.0f}s: " + line(row))

    print(f"\n{data.name}: {n} test jobs, best single {test.models[best]} quality {best_q:.4f}; "
          f"margin bias {bias:.4f}")
    print(f"{'post-hoc estimator':<22} {'AUC':>6} {'AUC cheap':>9} {'reach-best':>10} {'within .01':>10} "
          f"{'quality':>7} {'models/job':>10} {'escalated':>9}")
    for row in results:
        print(line(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": data.name, "n_test": n, "best_model": test.models[best],
                                               "best_quality": best_q, "margin_bias": bias, "seed": args.seed,
                                               "draw": args.draw, "rows": results},
                                              indent=2) + "\n", encoding="utf-8")


def sweep(router: PolicyRouter, judge: Judge, scores: np.ndarray, real_cost: np.ndarray, grid: list[float],
          best_q: float, best_cost: float, margin: SafetyMargin, args: argparse.Namespace,
          say: Callable[[str], None]) -> dict:
    """The cascade curve near the best model's quality (see the module doc) and its headline figures."""
    routed: dict[float, tuple[PolicyPoint, dict[str, float]]] = {}

    def at_alpha(alpha: float) -> PolicyPoint:
        if alpha not in routed:
            plans = router.plans(min(alpha + margin(alpha), 1.0))
            run = run_plans(plans, router.ids, router.column, judge, scores, real_cost)
            routed[alpha] = (make_point(alpha, float(run.score.mean()), float(run.cost_usd.sum()), best_cost),
                             run.summary())
            pt = routed[alpha][0]
            say(f"  alpha {alpha:.4f}: quality {pt.quality:.4f} cost share {pt.cost_share_of_best:.1%} "
                f"models/job {routed[alpha][1]['models_run_per_job']:.2f}")
        return routed[alpha][0]

    start = next((i for i, a in enumerate(grid) if a >= best_q - args.span - 1e-9), 0)
    points, reached, last = [], 0, None
    for alpha in grid[start:]:
        pt = at_alpha(alpha)
        points.append(pt)
        reached = reached + 1 if pt.quality >= best_q - 1e-9 else 0
        same = last is not None and (pt.quality, pt.cost_usd) == (last.quality, last.cost_usd)
        last = pt
        if reached >= args.past or same:
            break
    while start > 0 and min(points, key=lambda q: q.alpha or 0.0).quality >= best_q - ALPHA_TOLERANCE - 1e-9:
        start -= 1
        points.append(at_alpha(grid[start]))
    points += refine_reach_best(at_alpha, points, best_q, DEFAULT_REFINE_STEPS)
    share = reach_best(points, best_q)
    hits = [p for p in points if share is not None and p.cost_share_of_best == share]
    head = hits[0] if hits else max(points, key=lambda p: (p.quality, -p.cost_usd))
    stats = routed[float(head.alpha or 0.0)][1]
    return {"reach_best": share, "within_tolerance": reach_best(points, best_q - ALPHA_TOLERANCE),
            "headline_alpha": head.alpha, "quality": head.quality, "cost_share": head.cost_share_of_best,
            "models_run_per_job": stats["models_run_per_job"], "share_escalated": stats["share_escalated"],
            "max_quality": max(p.quality for p in points), "alphas_routed": len(routed),
            "sweep_step": ALPHA_STEP}


def line(row: dict) -> str:
    return (f"{row['estimator']:<22} {row['auc_within_task']:>6.3f} {row['auc_within_task_cheapest']:>9.3f} "
            f"{fmt(row['reach_best']):>10} {fmt(row['within_tolerance']):>10} {row['quality']:>7.4f} "
            f"{row['models_run_per_job']:>10.2f} {row['share_escalated']:>9.1%}")


def fmt(x: float | None) -> str:
    return f"{x:.1%}" if x is not None else "never"


if __name__ == "__main__":
    main()
