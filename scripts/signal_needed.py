"""How much within-task signal would a predictor need to reach a cost target? (issue 3 evidence)

    python scripts/signal_needed.py out/data/routellm_gsm8k.jsonl [--window 256]

The replay's ``task-oracle`` knows each task's realised success rate per model on the test split
and nothing inside a task. This script gives that oracle a synthetic, *partly informed* predictor
and asks how good it has to be before the optimizer reaches the best single model's quality at a
given cost share. For each separation d, per (job, model)

    z = logit(task rate) + d * (2 * score - 1) + N(0, 1),   p = Platt(z) fitted on those outcomes

(the predictors' own Platt calibrator, fitted on the test outcomes themselves: calibrated, so
only discrimination varies). d = 0 is the task oracle; larger d ranks more of a model's right answers above its wrong
ones inside each task. For each d the table prints the within-task ROC-AUC (mean over models,
the same measure as the replay's ``auc_within_task``) and the reach-best cost share of the same
windowed optimizer the replay runs. Compare the AUC a target needs with what the real predictor
achieves on the same split (the replay JSON's details.calibration_test).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.datasets import read_dataset
from scheduler.datasets.costing import realised_cost_usd
from scheduler.predictor.calibration import Calibrator, logit, within_task_auc
from scheduler.replay import policies as pol
from scheduler.replay.frontier import refine_reach_best
from scheduler.replay.report import ALPHA_TOLERANCE, PolicyPoint, make_point, reach_best
from scheduler.replay.runner import split_matrices, sweep_alphas

SEPARATIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = read_dataset(args.dataset)
    _, test, _ = split_matrices(data)
    n = len(test.ids)
    order = np.random.default_rng(args.seed).permutation(n)   # the replay's arrival order
    scores = test.scores[order]
    cost = realised_cost_usd(test, data.prices)[order]
    tasks = [test.tasks[i] for i in order]
    quality = scores.mean(axis=0)
    best = pol.best_single_model(quality, cost.sum(axis=0))
    best_cost = float(cost[:, best].sum())
    rows = np.arange(n)
    alphas = sweep_alphas(quality.tolist(), float(scores[rows, pol.oracle_best(scores, cost)].mean()))
    base = logit(pol.task_rates(scores, tasks))
    rng = np.random.default_rng(args.seed)
    noise = rng.standard_normal(scores.shape)
    print(f"{data.name}: {n} test jobs, best single {test.models[best]} {quality[best]:.3f}")
    print(f"{'d':>5} {'within-task AUC':>16} {'reach-best':>11} {'within 0.01':>12}")
    for d in SEPARATIONS:
        z = base + d * (2 * scores - 1) + (noise if d > 0 else 0.0)
        raw = 1.0 / (1.0 + np.exp(-z))
        p = Calibrator("platt").fit(raw, scores).transform(raw)   # the predictors' own calibration
        auc = np.nanmean([within_task_auc(p[:, j], scores[:, j], tasks) for j in range(scores.shape[1])])

        def at_alpha(alpha: float, p: np.ndarray = p) -> PolicyPoint:
            pick = pol.ilp_policy(p, cost, alpha, args.window, pol.SolverChoice())
            return make_point(alpha, float(scores[rows, pick].mean()), float(cost[rows, pick].sum()), best_cost)

        points = [at_alpha(alpha) for alpha in alphas]
        points += refine_reach_best(at_alpha, points, float(quality[best]))   # as the replay does
        share = reach_best(points, float(quality[best]))
        near = reach_best(points, float(quality[best]) - ALPHA_TOLERANCE)
        print(f"{d:>5.2f} {auc:>16.3f} {fmt(share):>11} {fmt(near):>12}", flush=True)


def fmt(x: float | None) -> str:
    return f"{x:.1%}" if x is not None else "-"


if __name__ == "__main__":
    main()
