"""How well does a model's *answer* say whether it is right? Post-hoc vs ex-ante signal (issue 12).

    python scripts/posthoc_signal.py [--shared ../shared/data] [--sets routerbench,routellm-gsm8k]

Converts the public sets that log answers (RouterBench subset, RouteLLM GSM8K) straight from
``shared/data``, fits on the **train split only** and scores the **test split**:

* the ex-ante predictor (default ``switchyard``) fitted on train: p(model k is right | prompt);
* the post-hoc estimator (default ``posthoc``) fitted on train, with the ex-ante predictor's
  *out-of-fold* p on the train rows as a feature (3-fold cross-fit, :func:`cross_fit_ex_ante`) and
  its test p at test time: p(model k is right | prompt, its answer, the answers so far).

For each cheap model (the three with the least mean logged cost on train; GSM8K has one) it prints
within-task ROC-AUC (score >= 0.5 as success, per task weighted by rows, the replay's
``auc_within_task``), Brier score and ECE, on the test rows where the model was observed:

* ``ex-ante``: the ex-ante predictor's p;
* ``(a) alone``: the post-hoc p from the model's own answer;
* ``(b) + M2``: the post-hoc p with one other cheap model's answer available (its agreement);
  GSM8K has only GPT-4 beside Mixtral, so its (b) row is "+ gpt-4" (not a cheap second opinion);
* ``(c)``: with both other cheap models' answers (RouterBench).

``--cv`` instead evaluates on 3 job folds of the train split (test never read): what the design
choices were made on. ``--drop F1,F2`` removes query features (ablations), ``--estimator`` picks
another registered estimator (``posthoc-trees``, ``posthoc-linear``), ``--no-ex-ante`` /
``--no-text`` leave the ex-ante feature / the answer TF-IDF model out, ``--timing`` adds the
scoring time of 10k queries, ``--matrix`` the AUC of every model alone and with every other
model's answer. ``--cache DIR`` keeps the ex-ante arrays between runs. Results: docs/replay.md,
"Post-hoc signal".
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.model_selection import KFold  # noqa: E402

from scheduler.datasets import convert  # noqa: E402
from scheduler.datasets.costing import OutcomeMatrix, realised_cost_usd  # noqa: E402
from scheduler.datasets.records import Split  # noqa: E402
from scheduler.predictor import make_predictor  # noqa: E402
from scheduler.predictor.calibration import brier_score, expected_calibration_error, within_task_auc  # noqa: E402
from scheduler.predictor.posthoc import AnswerTable, PosthocEstimator, cross_fit_ex_ante, make_posthoc  # noqa: E402

SETS = {"routerbench": "routerbench_subset_routerdc", "routellm-gsm8k": "routellm"}
CHEAP = 3


def _matrices(kind: str, shared: Path) -> tuple[OutcomeMatrix, OutcomeMatrix, np.ndarray]:
    """(train, test, each model's mean realised cost per train job)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = convert(kind, shared / SETS[kind], Path(tmp) / f"{kind}.jsonl")
    models = data.models
    train = OutcomeMatrix.from_records(data.split(Split.TRAIN), models)
    cost = realised_cost_usd(train, data.prices)
    return (train, OutcomeMatrix.from_records(data.split(Split.TEST), models),
            np.nanmean(np.where(np.isnan(train.scores), np.nan, cost), axis=0))


def _ex_ante(args: argparse.Namespace, kind: str, train: OutcomeMatrix, test: OutcomeMatrix
             ) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold p on train, p on test) of the ex-ante predictor fitted on train."""
    cache = Path(args.cache) / f"exante-{kind}-{args.ex_ante}.npz" if args.cache else None
    if cache is not None and cache.is_file():
        blob = np.load(cache)
        return blob["oof"], blob["test"]
    oof = cross_fit_ex_ante(args.ex_ante, train.prompts, train.scores, train.output_tokens, train.models,
                            tasks=train.tasks)
    pred = make_predictor(args.ex_ante).fit(train.prompts, train.scores, train.output_tokens, train.models,
                                            tasks=train.tasks)
    p_test = pred.predict(test.prompts, tasks=test.tasks).p_success
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, oof=oof, test=p_test)
    return oof, p_test


Metrics = dict[str, float]


def _metrics(p: np.ndarray, y: np.ndarray, tasks: list[str]) -> Metrics:
    """Within-task AUC, Brier, ECE, and the AUC inside each task (key ``auc:TASK``)."""
    out = {"auc": within_task_auc(p, y, tasks), "brier": brier_score(p, y), "ece": expected_calibration_error(p, y)}
    labels = np.asarray(tasks, dtype=object)
    for task in sorted(set(tasks)):
        rows = labels == task
        out[f"auc:{task}"] = within_task_auc(p[rows], y[rows], None)
    return out


def _evaluate(args: argparse.Namespace, train: OutcomeMatrix, oof_train: np.ndarray, test: OutcomeMatrix,
              p_test: np.ndarray, cost: np.ndarray, label: str) -> list[tuple[str, str, str, Metrics]]:
    """Fit the post-hoc estimator on ``train`` and score the cheap models' answers on ``test``."""
    t0 = time.perf_counter()
    est = make_posthoc(args.estimator, drop_features=args.drop, use_ex_ante=not args.no_ex_ante,
                       use_text=not args.no_text)
    assert train.responses is not None and test.responses is not None
    est.fit(train.prompts, train.scores, train.responses, train.models, tasks=train.tasks, ex_ante_p=oof_train)
    fit_s = time.perf_counter() - t0
    table = est.featurize(test.prompts, test.responses, tasks=test.tasks,
                          ex_ante_p=p_test if est.fitted_with_ex_ante else None)
    cheap = [int(j) for j in np.argsort(cost)[:min(CHEAP, len(cost) - 1)]]
    rows_out = []
    for k in cheap:
        name = train.models[k]
        others = cheap if len(cheap) > 1 else [j for j in range(len(train.models)) if j != k]
        seen = ~np.isnan(test.scores[:, k]) & table.answered[:, k]
        rows = np.flatnonzero(seen)
        y = test.scores[rows, k]
        tasks = [test.tasks[i] for i in rows]
        rows_out.append((label, name, "ex-ante", _metrics(p_test[rows, k], y, tasks)))
        p = est.predict_table(table, rows, np.full(rows.size, k))
        rows_out.append((label, name, "(a) alone", _metrics(p, y, tasks)))
        for m in others:
            if m == k:
                continue
            both = rows[table.answered[rows, m]]
            earlier = np.zeros((both.size, len(train.models)), dtype=bool)
            earlier[:, m] = True
            p2 = est.predict_table(table, both, np.full(both.size, k), earlier)
            rows_out.append((label, name, f"(b) + {train.models[m]}",
                             _metrics(p2, test.scores[both, k], [test.tasks[i] for i in both])))
        rest = [m for m in others if m != k]
        if len(rest) >= 2:
            every = rows[table.answered[np.ix_(rows, np.array(rest))].all(axis=1)]
            earlier = np.zeros((every.size, len(train.models)), dtype=bool)
            earlier[:, rest] = True
            p3 = est.predict_table(table, every, np.full(every.size, k), earlier)
            rows_out.append((label, name, "(c) + both other cheap models",
                             _metrics(p3, test.scores[every, k], [test.tasks[i] for i in every])))
    print(f"  [{label}] fitted in {fit_s:.1f} s on {len(train.ids)} jobs", file=sys.stderr, flush=True)
    if args.matrix:
        _matrix(est, table, test)
    if args.timing:
        n = 10_000
        rng = np.random.default_rng(0)
        rows = rng.integers(0, table.num_jobs, n)
        models = rng.integers(0, len(train.models), n)
        earlier = rng.random((n, len(train.models))) < 0.3
        t0 = time.perf_counter()
        est.predict_table(table, rows, models, earlier)
        print(f"  [{label}] predict_table: {n} queries x {len(train.models)} models in "
              f"{time.perf_counter() - t0:.3f} s", file=sys.stderr)
    return rows_out


def _matrix(est: PosthocEstimator, table: AnswerTable, test: OutcomeMatrix) -> None:
    """Within-task AUC of every model's answer alone (diagonal) and with each other model's."""
    m = len(test.models)
    short = [name.split("/")[-1][:10] for name in test.models]
    print("\nwithin-task AUC of the row model's answer, alone (diagonal) or with the column model's answer")
    print(f"{'':<12}" + "".join(f"{h:>11}" for h in short))
    for k in range(m):
        cells = []
        for j in range(m):
            rows = np.flatnonzero(~np.isnan(test.scores[:, k]) & table.answered[:, k] & table.answered[:, j])
            earlier = np.zeros((rows.size, m), dtype=bool)
            if j != k:
                earlier[:, j] = True
            p = est.predict_table(table, rows, np.full(rows.size, k), earlier)
            cells.append(within_task_auc(p, test.scores[rows, k], [test.tasks[i] for i in rows]))
        print(f"{short[k]:<12}" + "".join(f"{c:>11.3f}" for c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--ex-ante", default="switchyard")
    parser.add_argument("--estimator", default="posthoc")
    parser.add_argument("--drop", default="", help="comma-separated query features to leave out")
    parser.add_argument("--no-ex-ante", action="store_true")
    parser.add_argument("--no-text", action="store_true", help="leave the answer-text TF-IDF model out")
    parser.add_argument("--cv", action="store_true", help="3 job folds of the train split instead of test")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--matrix", action="store_true", help="also every model with every other model's answer")
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    args.drop = [f for f in args.drop.split(",") if f]
    shared = Path(args.shared)
    for kind in args.sets.split(","):
        train, test, cost = _matrices(kind, shared)
        oof, p_test = _ex_ante(args, kind, train, test)
        if args.cv:
            results = []
            splits = KFold(3, shuffle=True, random_state=0).split(np.arange(len(train.ids)))
            for f, (tr, te) in enumerate(splits):
                results += _evaluate(args, train.subset(tr), oof[tr], train.subset(te), oof[te], cost,
                                     f"{kind} cv{f}")
            # pool the folds: mean of each metric per (model, signal)
            keys = dict.fromkeys((r[1], r[2]) for r in results)
            pooled = [(f"{kind} (train CV)", mdl, sig,
                       {k: float(np.nanmean([r[3][k] for r in results if (r[1], r[2]) == (mdl, sig)]))
                        for k in results[0][3]})
                      for mdl, sig in keys]
        else:
            pooled = _evaluate(args, train, oof, test, p_test, cost, kind)
        _print(kind, pooled)


def _print(kind: str, results: list[tuple[str, str, str, Metrics]]) -> None:
    tasks = [k.removeprefix("auc:") for k in results[0][3] if k.startswith("auc:")]
    per_task = [f"AUC {t[:10]}" for t in tasks] if len(tasks) > 1 else []
    head = f"{'model':<36} {'signal':<46} {'AUC':>6} " + "".join(f"{h:>15} " for h in per_task)
    print(f"\n{results[0][0]}\n{head}{'Brier':>6} {'ECE':>6}")
    for _label, mdl, sig, met in results:
        cells = "".join(f"{met['auc:' + t]:>15.3f} " for t in tasks) if per_task else ""
        print(f"{mdl[-36:]:<36} {sig[:46]:<46} {met['auc']:>6.3f} {cells}{met['brier']:>6.3f} {met['ece']:>6.3f}",
              flush=True)


if __name__ == "__main__":
    main()
