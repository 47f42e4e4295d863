"""The optional sentence-embedding featuriser (``embeddings`` extra): plumbing, cache, errors.

Tests marked ``needs_extra`` run the real all-MiniLM-L6-v2 int8 ONNX model and are skipped where
the extra is not installed; the rest replace the encoder with a deterministic stand-in, so the
predictor plumbing is covered everywhere.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scheduler.predictor import embeddings as emb
from scheduler.predictor import load_predictor, make_predictor
from scheduler.predictor.calibrated import CalibratedPredictor
from scheduler.predictor.features import TextFeaturizer
from scheduler.predictor.featurizers import make_featurizer

needs_extra = pytest.mark.skipif(not emb.embeddings_available(), reason="the embeddings extra is not installed")

TOPICS = {
    "math": "compute the integral derivative equation algebra number sum",
    "code": "write a python function list loop return string parse",
    "history": "which empire treaty war king century revolution dynasty",
}
MODELS = ["math-model", "code-model", "big-model"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    tasks = [names[i % 3] for i in range(n)]
    prompts = [" ".join(rng.choice(TOPICS[t].split(), size=8)) + f" item {i}" for i, t in enumerate(tasks)]
    rate = {"math": (0.9, 0.2, 0.8), "code": (0.2, 0.9, 0.8), "history": (0.3, 0.3, 0.8)}
    scores = (rng.random((n, 3)) < np.array([rate[t] for t in tasks])).astype(float)
    tokens = np.where(np.array(tasks)[:, None] == "code", 300.0, 40.0) * np.array([1.0, 1.5, 2.0])[None, :]
    return prompts, tasks, scores, tokens


def fake_encode(self: emb.SentenceEncoder, prompts: list[str], progress: object = None) -> np.ndarray:
    """Bag of hashed words projected to 384 dims, unit rows: a stand-in with topic signal."""
    out = np.zeros((len(prompts), emb.DIMENSION), dtype=np.float32)
    for i, text in enumerate(prompts):
        for word in text.split():
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
            out[i] += np.random.default_rng(seed).standard_normal(emb.DIMENSION).astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return out


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emb.SentenceEncoder, "encode", fake_encode)


@pytest.fixture
def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(emb.ENV_MODEL_DIR, raising=False)
    monkeypatch.setattr(emb, "_package_dir", lambda name: None)


def test_tfidf_stays_the_default() -> None:
    pred = make_predictor("switchyard")
    assert isinstance(pred, CalibratedPredictor) and pred.featurizer_kind == "tfidf"
    assert type(pred.featurizer) is TextFeaturizer
    minilm = make_predictor("switchyard-minilm")
    assert isinstance(minilm, CalibratedPredictor) and minilm.featurizer_kind == "minilm"
    with pytest.raises(ValueError, match="unknown featuriser"):
        make_featurizer("word2vec")


def test_importing_the_predictors_does_not_import_the_runtime() -> None:
    code = ("import sys, scheduler.predictor as p; p.make_predictor('switchyard-minilm'); "
            "assert 'onnxruntime' not in sys.modules and 'tokenizers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_extra(no_extra: None) -> None:
    prompts, tasks, scores, tokens = corpus(30)
    with pytest.raises(emb.EmbeddingsUnavailable, match=r"switchyard\[embeddings\]"):
        make_predictor("switchyard-minilm").fit(prompts, scores, tokens, MODELS, tasks=tasks)
    assert not emb.embeddings_available()


def test_model_dir_env_must_hold_both_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(emb.ENV_MODEL_DIR, str(tmp_path))
    with pytest.raises(emb.EmbeddingsUnavailable, match="model.onnx and tokenizer.json"):
        emb.resolve_model_files()


def test_cache_round_trip_and_torn_shards(tmp_path: Path) -> None:
    cache = emb.EmbeddingCache(tmp_path)
    keys = [emb.text_key(t) for t in ("a", "b", "c")]
    vecs = np.arange(3 * emb.DIMENSION, dtype=np.float32).reshape(3, -1)
    cache.put(keys[:2], vecs[:2])
    (tmp_path / "shard-broken.npz").write_bytes(b"not a zip")
    fresh = emb.EmbeddingCache(tmp_path)
    got = fresh.get(keys)
    assert got[2] is None
    np.testing.assert_array_equal(np.stack(got[:2]), vecs[:2])   # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["switchyard-minilm", "linear-minilm", "knn-beta-minilm", "switchyard-hybrid"])
def test_minilm_predictors_learn_and_save(name: str, fake_encoder: None, tmp_path: Path) -> None:
    prompts, tasks, scores, tokens = corpus(300)
    pred = make_predictor(name).fit(prompts[:240], scores[:240], tokens[:240], MODELS, tasks=tasks[:240])
    out = pred.predict(prompts[240:], tasks=tasks[240:])
    assert out.p_success.shape == (60, 3)
    is_math = np.array(tasks[240:]) == "math"
    assert out.p_success[is_math, 0].mean() > out.p_success[~is_math, 0].mean() + 0.3
    pred.save(tmp_path / "p.bin")
    again = load_predictor(tmp_path / "p.bin")
    np.testing.assert_allclose(again.predict(prompts[240:], tasks=tasks[240:]).p_success, out.p_success)


def test_minilm_blend_keeps_the_sparse_ngram_models(fake_encoder: None) -> None:
    """The sentence vectors replace LSA only: the n-gram logistic and shared-difficulty
    components still see the word 1-2 gram TF-IDF."""
    prompts, tasks, scores, tokens = corpus(300)
    pred = make_predictor("switchyard-minilm").fit(prompts, scores, tokens, MODELS, tasks=tasks)
    assert pred.featurizer.transform(prompts[:5]).text is not None
    assert pred.logistic is not None and pred.shared is not None


@needs_extra
def test_real_encoder_is_offline_unit_and_semantic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    enc = emb.SentenceEncoder(threads=1, cache_dir=tmp_path)
    texts = ["How do I reverse a list in Python?", "Python: reverse the order of a list",
             "Which treaty ended the Thirty Years' War?", "   "]
    vecs = enc.encode(texts)
    assert vecs.shape == (4, emb.DIMENSION) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    # a second encoder on the same cache directory computes nothing
    again = emb.SentenceEncoder(threads=1, cache_dir=tmp_path)
    again._ensure_loaded()
    monkeypatch.setattr(again, "_run", lambda texts: pytest.fail("recomputed a cached prompt"))
    np.testing.assert_allclose(again.encode(texts), vecs)


@needs_extra
def test_real_encoder_keeps_the_tail_of_long_prompts() -> None:
    enc = emb.SentenceEncoder(threads=1, max_tokens=32)
    question = "Which treaty ended the Thirty Years' War?"
    prefix = "Example: compute 2 + 2. Answer: 4. " * 50
    long_q, bare = enc.encode([prefix + question, question])
    other = enc.encode([prefix + "How do I reverse a list in Python?"])[0]
    assert long_q @ bare > other @ bare
