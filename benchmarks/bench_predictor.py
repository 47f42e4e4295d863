"""Predictor speed: fit time, featurisation time and scoring time for N jobs x M models.

    python benchmarks/bench_predictor.py                 # synthetic prompts (self-contained)
    python benchmarks/bench_predictor.py --data out/data/routellm_mmlu.jsonl   # real prompts

Featurisation (TF-IDF + LSA of the prompt text, plus the word and character n-gram TF-IDF the
sparse logistic models score) is done once per job, at submission; what a
scheduling tick repeats is scoring already-featurised jobs, so the two are timed apart. The
target is scoring 10k jobs x 8 models well under a second.
"""
from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from scheduler.predictor import make_predictor

_WORDS = ["apple", "river", "compute", "matrix", "proof", "theorem", "integral", "python", "function", "list", "sort", "graph", "history", "treaty", "war", "king", "molecule", "energy", "force", "velocity", "protein", "cell", "gene", "market", "price", "loan", "interest", "poem", "rhyme", "novel", "author", "court", "law", "contract", "tax", "how", "many", "what", "which", "why", "explain", "write", "calculate", "the", "a", "of", "to", "and", "in", "is", "for", "on", "with"]


def synthetic(n: int, m: int, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 120, size=n)
    prompts = [" ".join(rng.choice(_WORDS, size=k)) + f" {rng.integers(0, 999)}?" for k in lengths]
    skill = np.linspace(0.3, 0.9, m)
    hard = rng.random(n)
    scores = (rng.random((n, m)) < np.clip(skill[None, :] + 0.3 - 0.6 * hard[:, None], 0, 1)).astype(float)
    tasks = [f"t{int(h * 5)}" for h in hard]
    return prompts, scores, tasks


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an interchange-format dataset to take prompts from")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--predictors", nargs="+", default=["eccos-r", "knn-beta", "linear", "logistic", "switchyard-lsa", "switchyard"])
    args = ap.parse_args()

    n_all = args.train + max(args.jobs)
    prompts, scores, tasks = synthetic(n_all, args.models, seed=0)
    source = "synthetic"
    if args.data:
        from scheduler.datasets import read_dataset

        real = [r.prompt for r in read_dataset(args.data).records]
        prompts = [real[i % len(real)] for i in range(n_all)]
        source = args.data
    tr = slice(0, args.train)
    names = [f"m{j}" for j in range(args.models)]
    print(f"prompts: {source}; train {args.train} jobs x {args.models} models; best of 3 runs\n")
    print(f"| predictor | fit s | jobs | featurize s | score s (x {args.models} models) | total s |")
    print("|---|---|---|---|---|---|")
    for name in args.predictors:
        start = time.perf_counter()
        pred = make_predictor(name).fit(prompts[tr], scores[tr], None, names, tasks=tasks[tr])
        fit_s = time.perf_counter() - start
        for n in args.jobs:
            jobs, jtasks = prompts[args.train:args.train + n], tasks[args.train:args.train + n]
            feat_s, feats = timed(partial(pred.featurize, jobs, jtasks))
            score_s, _ = timed(partial(pred.predict_features, feats))
            print(f"| {name} | {fit_s:.2f} | {n:,} | {feat_s:.3f} | {score_s:.3f} | {feat_s + score_s:.3f} |")


if __name__ == "__main__":
    main()
