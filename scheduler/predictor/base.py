"""The predictor interface: per (job, model) chance of success and expected output length.

A predictor is fitted on past outcomes -- ``scores`` (N, M) in [0, 1] with nan where a model was
not observed on a query, and optionally ``output_tokens`` (N, M) with nan -- and then scores new
prompts. It is pure: arrays in, arrays out; no database and no clock. Implementations register
under a name (:func:`register`) so the CLI, replay and the tick pick them by string.
"""
from __future__ import annotations

import abc
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from scheduler.errors import InvalidRequest, SwitchyardError

FORMAT_VERSION = 2   # 2: SparseText holds one vectorizer, not a list
_MAGIC = "switchyard-predictor"


class PredictorError(SwitchyardError):
    """The predictor could not be fitted, loaded or used."""


class NotFitted(PredictorError):
    """The predictor has not been fitted; call fit() or load() first."""


class UnknownPredictor(InvalidRequest):
    """No predictor is registered under that name."""


@dataclass(frozen=True)
class Prediction:
    """What a predictor says about N prompts x M models (columns in ``model_names`` order)."""

    model_names: tuple[str, ...]
    p_success: np.ndarray                 # (N, M) float in [0, 1]
    output_tokens: np.ndarray | None      # (N, M) float >= 0, None when never trained on tokens


@dataclass(frozen=True)
class JobFeatures:
    """Featurised jobs, as returned by :meth:`Predictor.featurize` (opaque to callers)."""

    num_jobs: int
    data: Any


class Predictor(abc.ABC):
    """Base class: validates inputs, keeps the model names, saves and loads itself."""

    name: str = "abstract"

    def __init__(self) -> None:
        self.model_names: tuple[str, ...] = ()
        #: observed outcomes per model in the fit (exploration counts these as known labels)
        self.label_counts: dict[str, int] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.model_names)

    def fit(
        self,
        prompts: Sequence[str],
        scores: np.ndarray,
        output_tokens: np.ndarray | None,
        model_names: Sequence[str],
        tasks: Sequence[str] | None = None,
    ) -> Predictor:
        """Learn from past outcomes; ``scores`` and ``output_tokens`` are (N, M), nan = unobserved.

        ``tasks`` optionally labels each prompt with a category (a task or tenant name); when
        given, a model's success rate on that category becomes the prior the predictor shrinks
        towards. Pass the same kind of labels (or None) to :meth:`predict`.
        """
        scores = np.asarray(scores, dtype=float)
        n, m = len(prompts), len(model_names)
        if scores.shape != (n, m):
            raise PredictorError(f"scores has shape {scores.shape}, expected ({n}, {m})")
        if n < 2:
            raise PredictorError("need at least 2 training prompts")
        observed = scores[~np.isnan(scores)]
        if observed.size and (observed.min() < 0.0 or observed.max() > 1.0):
            raise PredictorError("scores must lie in [0, 1] (nan for unobserved)")
        empty = [model_names[j] for j in range(m) if np.isnan(scores[:, j]).all()]
        if empty:
            raise PredictorError(f"no observed outcome for models {empty}")
        tokens = None
        if output_tokens is not None:
            tokens = np.asarray(output_tokens, dtype=float)
            if tokens.shape != (n, m):
                raise PredictorError(f"output_tokens has shape {tokens.shape}, expected ({n}, {m})")
            if np.isnan(tokens).all():
                tokens = None
        if tasks is not None and len(tasks) != n:
            raise PredictorError(f"got {len(tasks)} tasks for {n} prompts")
        self._fit(list(prompts), None if tasks is None else list(tasks), scores, tokens)
        self.model_names = tuple(model_names)
        self.label_counts = {name: int((~np.isnan(scores[:, j])).sum()) for j, name in enumerate(model_names)}
        return self

    def featurize(self, prompts: Sequence[str], tasks: Sequence[str] | None = None) -> JobFeatures:
        """Turn prompts into the features this predictor scores (do it once per job, e.g. at submit).

        Text featurisation dominates the cost of :meth:`predict`; a tick that re-scores waiting
        jobs should keep these and call :meth:`predict_features`.
        """
        if not self.fitted:
            raise NotFitted()
        if tasks is not None and len(tasks) != len(prompts):
            raise PredictorError(f"got {len(tasks)} tasks for {len(prompts)} prompts")
        return JobFeatures(len(prompts), self._featurize(list(prompts), None if tasks is None else list(tasks)))

    def predict_features(self, features: JobFeatures) -> Prediction:
        """Score featurised jobs against every model the predictor was fitted on."""
        if not self.fitted:
            raise NotFitted()
        if features.num_jobs == 0:
            return Prediction(self.model_names, np.zeros((0, len(self.model_names))), None)
        p, tokens = self._predict_features(features.data)
        return Prediction(self.model_names, np.clip(p, 0.0, 1.0), tokens)

    def predict(self, prompts: Sequence[str], tasks: Sequence[str] | None = None) -> Prediction:
        """Score ``prompts`` (with their optional task labels) against every fitted model."""
        return self.predict_features(self.featurize(prompts, tasks))

    @abc.abstractmethod
    def _fit(self, prompts: list[str], tasks: list[str] | None, scores: np.ndarray,
             output_tokens: np.ndarray | None) -> None:
        """Fit on validated arrays (``output_tokens`` None when no tokens were observed)."""

    @abc.abstractmethod
    def _featurize(self, prompts: list[str], tasks: list[str] | None) -> Any:
        """Implementation-specific features of the jobs."""

    @abc.abstractmethod
    def _predict_features(self, data: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (p_success (N, M), output_tokens (N, M) or None)."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters (as chosen by cross-validation after fit) for reports."""
        return {}

    def save(self, path: str | Path) -> None:
        """Write the fitted predictor to ``path`` (a pickle with a version header)."""
        if not self.fitted:
            raise NotFitted()
        blob = {"magic": _MAGIC, "version": FORMAT_VERSION, "name": self.name, "predictor": self}
        Path(path).write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))


def load_predictor(path: str | Path) -> Predictor:
    """Read a predictor written by :meth:`Predictor.save`; refuses other files and other versions.

    Only load files you wrote yourself: the format is a pickle.
    """
    try:
        blob = pickle.loads(Path(path).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise PredictorError(f"{path}: not a readable predictor file ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("magic") != _MAGIC:
        raise PredictorError(f"{path}: not a Switchyard predictor file")
    if blob.get("version") != FORMAT_VERSION:
        raise PredictorError(
            f"{path}: predictor format version {blob.get('version')} but this Switchyard reads "
            f"{FORMAT_VERSION}; refit it"
        )
    predictor = blob["predictor"]
    if not isinstance(predictor, Predictor):
        raise PredictorError(f"{path}: the file holds no predictor")
    return predictor


_REGISTRY: dict[str, type[Predictor]] = {}
P = TypeVar("P", bound=type[Predictor])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make a predictor class available as ``make_predictor(name)``."""

    def decorate(cls: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PredictorError(f"predictor name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_predictors() -> list[str]:
    return sorted(_REGISTRY)


def make_predictor(name: str, **params: Any) -> Predictor:
    """A new, unfitted predictor of the registered kind ``name``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownPredictor(
            f"unknown predictor {name!r}; choose one of {available_predictors()}"
        ) from None
    return cls(**params)
