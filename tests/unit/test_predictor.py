"""Predictor registry, fitting contract, featurise/score split, and save/load."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from scheduler.predictor import (
    NotFitted,
    PredictorError,
    UnknownPredictor,
    available_predictors,
    load_predictor,
    make_predictor,
)

TOPICS = {
    "math": "compute the integral derivative equation algebra number sum",
    "code": "write a python function list loop return string parse",
    "history": "which empire treaty war king century revolution dynasty",
}


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Prompts from three topics; model 0 is good at math, model 1 at code, model 2 at everything."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    tasks = [names[i % 3] for i in range(n)]
    prompts = [" ".join(rng.choice(TOPICS[t].split(), size=8)) + f" item {i}" for i, t in enumerate(tasks)]
    rate = {"math": (0.9, 0.2, 0.8), "code": (0.2, 0.9, 0.8), "history": (0.3, 0.3, 0.8)}
    p = np.array([rate[t] for t in tasks])
    scores = (rng.random(p.shape) < p).astype(float)
    tokens = np.where(np.array(tasks)[:, None] == "code", 300.0, 40.0) * np.array([1.0, 1.5, 2.0])[None, :]
    return prompts, tasks, scores, tokens


MODELS = ["math-model", "code-model", "big-model"]


def test_registry_lists_the_four_predictors() -> None:
    assert {"eccos-r", "knn-beta", "linear", "switchyard"} <= set(available_predictors())
    with pytest.raises(UnknownPredictor, match="choose one of"):
        make_predictor("nope")


@pytest.mark.parametrize("name", ["eccos-r", "knn-beta", "linear", "switchyard"])
def test_fit_predict_learns_who_is_good_at_what(name: str) -> None:
    prompts, tasks, scores, tokens = corpus(300)
    pred = make_predictor(name).fit(prompts[:240], scores[:240], tokens[:240], MODELS, tasks=tasks[:240])
    out = pred.predict(prompts[240:], tasks=tasks[240:])
    assert out.model_names == tuple(MODELS)
    assert out.p_success.shape == (60, 3)
    is_math = np.array(tasks[240:]) == "math"
    assert out.p_success[is_math, 0].mean() > out.p_success[~is_math, 0].mean() + 0.3
    assert out.output_tokens is not None and out.output_tokens.shape == (60, 3)
    is_code = np.array(tasks[240:]) == "code"
    assert out.output_tokens[is_code, 1].mean() > 2 * out.output_tokens[~is_code, 1].mean()


def test_featurize_then_predict_features_equals_predict() -> None:
    prompts, tasks, scores, _ = corpus(120)
    pred = make_predictor("switchyard").fit(prompts[:90], scores[:90], None, MODELS, tasks=tasks[:90])
    direct = pred.predict(prompts[90:], tasks=tasks[90:])
    staged = pred.predict_features(pred.featurize(prompts[90:], tasks=tasks[90:]))
    np.testing.assert_allclose(direct.p_success, staged.p_success)
    assert direct.output_tokens is None  # never trained on tokens


def test_unobserved_and_fractional_scores_are_accepted() -> None:
    prompts, _tasks, scores, _ = corpus(150)
    scores = scores.copy()
    scores[::3, 0] = np.nan            # model 0 unobserved on a third of the queries
    scores[1::4, 2] = 0.5              # partial credit (F1-style)
    pred = make_predictor("switchyard").fit(prompts, scores, None, MODELS)
    assert np.isfinite(pred.predict(prompts[:5]).p_success).all()


def test_fit_rejects_bad_input() -> None:
    prompts, _, scores, _ = corpus(30)
    with pytest.raises(PredictorError, match="shape"):
        make_predictor("knn-beta").fit(prompts, scores[:, :2], None, MODELS)
    with pytest.raises(PredictorError, match=r"\[0, 1\]"):
        make_predictor("knn-beta").fit(prompts, scores * 2, None, MODELS)
    bad = scores.copy()
    bad[:, 1] = np.nan
    with pytest.raises(PredictorError, match="code-model"):
        make_predictor("knn-beta").fit(prompts, bad, None, MODELS)
    with pytest.raises(NotFitted):
        make_predictor("linear").predict(["hello"])


def test_save_load_round_trip(tmp_path: Path) -> None:
    prompts, tasks, scores, tokens = corpus(150)
    pred = make_predictor("switchyard").fit(prompts, scores, tokens, MODELS, tasks=tasks)
    path = tmp_path / "p.bin"
    pred.save(path)
    again = load_predictor(path)
    assert again.name == "switchyard" and again.params() == pred.params()
    np.testing.assert_allclose(again.predict(prompts[:20], tasks[:20]).p_success,
                               pred.predict(prompts[:20], tasks[:20]).p_success)


def test_load_refuses_other_versions_and_other_files(tmp_path: Path) -> None:
    prompts, _, scores, _ = corpus(60)
    pred = make_predictor("eccos-r").fit(prompts, scores, None, MODELS)
    path = tmp_path / "p.bin"
    pred.save(path)
    blob = pickle.loads(path.read_bytes())
    blob["version"] = 999
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(PredictorError, match="version 999"):
        load_predictor(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(PredictorError, match="not a readable"):
        load_predictor(path)


@pytest.mark.parametrize(("nb", "k", "exclude_self"), [(400, 10, True), (300, 64, False), (12, 11, True)])
def test_neighbour_search_is_exact(nb: int, k: int, exclude_self: bool) -> None:
    from scheduler.predictor.neighbours import top_k_neighbours

    rng = np.random.default_rng(nb)
    base = rng.normal(size=(nb, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    nq = min(50, nb)
    queries = base[:nq] if exclude_self else rng.normal(size=(nq, 8)).astype(np.float32)
    exclude = np.arange(nq) if exclude_self else None
    idx, sim = top_k_neighbours(queries, base, k, exclude=exclude, chunk_rows=16)
    full = queries @ base.T
    if exclude_self:
        full[np.arange(nq), np.arange(nq)] = -np.inf
    expect = np.sort(full, axis=1)[:, ::-1][:, : idx.shape[1]]
    np.testing.assert_allclose(sim, expect, rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, idx, axis=1), sim, rtol=1e-6)
    if exclude_self:
        assert not (idx == np.arange(nq)[:, None]).any()


def test_retrieval_base_is_capped_and_every_row_still_gets_a_leave_one_out_estimate() -> None:
    from scheduler.predictor.retrieval import BetaRetrievalScorer

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    capped = BetaRetrievalScorer(max_base_rows=100).fit(emb, (emb[:, :2] > 0).astype(float))
    assert capped._emb.shape == (100, 8)                 # predict searches 100 rows, not 300
    assert capped.oof_ is not None and capped.oof_.shape == (300, 2) and not np.isnan(capped.oof_).any()
    # Coin-flip outcomes: an honest out-of-fold estimate cannot beat the base rate (Brier ~0.25);
    # a row that saw its own outcome (its own weight exp(0) dwarfs its neighbours') would.
    coins = (rng.random((300, 2)) < 0.5).astype(float)
    for scorer in (BetaRetrievalScorer(max_base_rows=100), BetaRetrievalScorer()):
        oof = scorer.fit(emb, coins).oof_
        assert oof is not None and float(np.mean((oof - coins) ** 2)) > 0.23


def test_logistic_predictor_learns_who_is_good_at_what() -> None:
    prompts, tasks, scores, tokens = corpus(300)
    pred = make_predictor("logistic").fit(prompts[:240], scores[:240], tokens[:240], MODELS, tasks=tasks[:240])
    out = pred.predict(prompts[240:], tasks=tasks[240:])
    is_math = np.array(tasks[240:]) == "math"
    assert out.p_success[is_math, 0].mean() > out.p_success[~is_math, 0].mean() + 0.3


def within_task_corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """One task; a query asking for a 'proof' trips the cheap model, which otherwise succeeds.

    The marker is one word among many, so a 128-dimensional topic embedding blurs it, while a
    per-word model sees it directly."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    hard = rng.random(n) < 0.5
    prompts = [" ".join(rng.choice(vocab, size=30)) + (" proof" if h else " sum") for h in hard]
    p = np.column_stack([np.where(hard, 0.1, 0.9), np.full(n, 0.9)])
    return prompts, (rng.random(p.shape) < p).astype(float)


def test_sparse_ngram_models_see_within_task_words() -> None:
    prompts, scores = within_task_corpus(400)
    test_prompts, test_scores = within_task_corpus(200, seed=1)
    pred = make_predictor("switchyard").fit(prompts, scores, None, ["cheap", "big"])
    p = pred.predict(test_prompts).p_success[:, 0]
    hard = np.array([t.endswith("proof") for t in test_prompts])
    assert p[~hard].mean() > p[hard].mean() + 0.5
    weights = pred.params()["blend_weights"]["cheap"]
    assert weights["logistic"] + weights["shared"] > 0.5
    assert abs(sum(weights.values()) - 1.0) < 1e-9


def test_prompts_without_words_fall_back_to_the_task_rate() -> None:
    """Punctuation-only prompts give TF-IDF no vocabulary: the n-gram models see an empty matrix
    and the predictor still learns each task's rate instead of failing."""
    tasks = ["a", "b"] * 40
    prompts = ["?!" if t == "a" else "..." for t in tasks]
    scores = np.array([[1.0, 0.0] if t == "a" else [0.0, 1.0] for t in tasks])
    pred = make_predictor("switchyard").fit(prompts, scores, None, ["m0", "m1"], tasks=tasks)
    out = pred.predict(["?!", "..."], tasks=["a", "b"]).p_success
    assert out[0, 0] > out[1, 0] and out[1, 1] > out[0, 1]


def test_blend_weights_pick_the_better_component() -> None:
    from scheduler.predictor.calibrated import blend_weights, simplex_grid

    grid = simplex_grid(3)
    assert np.allclose(grid.sum(axis=1), 1.0) and len(grid) == 66
    rng = np.random.default_rng(0)
    y = (rng.random((500, 2)) < 0.5).astype(float)
    good, noise = 0.8 * y + 0.1, rng.random((500, 2))
    w = blend_weights(np.stack([noise, good, noise]), y)
    assert np.allclose(w[:, 1], 1.0)
