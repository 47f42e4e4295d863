"""Post-hoc quality estimation: p(good answer | prompt, model, its answer, the answers so far).

The ex-ante predictors (:mod:`scheduler.predictor.base`) score a job before any model has run; on
the public sets the prompt text separates a cheap model's right answers from its wrong ones only
barely (within-task ROC-AUC 0.53-0.63). Once a model *has* answered, the answer says more: whether a
final answer can be read from it and in what form, whether its worked arithmetic holds, whether
its code is Python that parses, what its wording is, and above all whether other models that
already ran on the job gave the same final answer. This module turns that into a calibrated
probability that a cascade can act on ("stop at the cheap model's answer, or escalate?").
Measured on the public sets in docs/replay.md, "Post-hoc signal" (``scripts/posthoc_signal.py``).

Interface (for the cascade optimizer, the replay and production)
----------------------------------------------------------------
::

    est = make_posthoc("posthoc").fit(prompts, scores, responses, model_names,
                                      tasks=tasks, ex_ante_p=oof_p)       # train split only
    table = est.featurize(prompts, responses, tasks=tasks, ex_ante_p=p)    # once per job set
    p_post = est.predict_table(table, rows, models, earlier)              # (K,), vectorised
    p_post = est.predict(prompts, models, answers, earlier_answers,       # (K,), from raw text
                         tasks=tasks, ex_ante_p=p_rows)
    est.save(path); est = load_posthoc(path)                               # pickle + format version

* ``responses`` (N, M) / ``answers`` (K,) are raw answer texts (``outcomes[MODEL].response`` of
  the interchange format, ``OutcomeMatrix.responses``; ``jobs.result_text`` in production); ``None``
  = that model has not run (or its answer was not logged: such cells are not learnt from).
* :meth:`~PosthocEstimator.predict_table` answers K queries at once: query q asks about model
  ``models[q]`` (a column index of ``est.model_names``, or a name) on job ``rows[q]`` of the table,
  given the answers of the models marked in ``earlier[q]`` ((K, M) bool; the query's own model and
  models without an answer are ignored; None = no earlier answers). It returns the calibrated p,
  nan where the table has no answer of that model. The same job may be asked about many times
  with different ``earlier`` sets (a cascade simulation). :meth:`~PosthocEstimator.predict` builds
  a small table from raw text: one ``{model: answer}`` dict of earlier answers per query.
* ``ex_ante_p``: the ex-ante predictor's p for each job, **every model's column** ((N, M) for
  ``featurize``/``fit``, (K, M) for ``predict``; nan where unknown). Model k's p is a feature; the
  other models' p weigh their agreement (a strong model agreeing counts more than a weak one; where
  nan, the model's task prior does). An estimator fitted with it (``fitted_with_ex_ante``) needs it
  at prediction time; one fitted without it ignores it. The training copy must be *out-of-fold*
  (:func:`cross_fit_ex_ante`): the estimator has to learn how far to trust p on jobs the ex-ante
  predictor did not see. In production the stored ``predicted_quality`` of the chosen model is
  such a value (predicted before the outcome), with nan for the other models.
* ``keep_oof=True`` in ``fit`` keeps ``oof_`` = (rows, models, earlier, p): the training queries'
  out-of-fold calibrated p_post, for a cascade that plans on the distribution of p_post before
  running a model (not saved with the estimator).
* Speed: reading an answer (:func:`scheduler.predictor.answers.read_answer`: regular expressions,
  a Python parse of code, a MinHash) takes ~0.03 ms (a letter) to ~0.5 ms (worked math, code),
  once per answer, in ``featurize``; ``predict_table`` is numpy plus the two learners and a Platt
  map: 10k queries over 11 models in ~0.13 s (docs/replay.md; ``scripts/posthoc_signal.py --timing``). A replay featurises its N x M answers
  once and then asks any (job, model, answers-so-far) combination.
* Production: score an answer when a worker writes it (``predict`` with the job's earlier attempts
  as ``earlier_answers``) and learn from graded outcomes whose answers are stored: ``fit`` on one
  row per job, one column per model, the answer of each attempt in ``responses`` (a job that ran one
  model contributes a first-answer example, a cascaded job its second opinions too). The label
  history must therefore carry the answer text (``LabelStore.history`` returns none today).
  ``label_counts`` is the number of graded answers per model, ``params()`` what CV chose. Fitting
  runs single-threaded by default (``threads``).

Model
-----
Training examples are (job, model k, set of earlier models) triples built from the graded answers:
every (job, k) appears with no earlier answers, with up to three single other models and with two
random larger sets (:func:`earlier_sets`), so one estimator serves the first answer, a second
opinion and a later cascade step. Features (:data:`QUERY_FEATURES`): the answer's own reading
(:data:`scheduler.predictor.answers.ANSWER_FEATURES`), the logit of model k's ex-ante p and of its
task prior, an answer-text score (:class:`AnswerTextModel`: logistic regression on the answer's word
1-2 gram TF-IDF, out-of-fold on training rows), and the agreement of its final answer with the
earlier answers (:data:`AGREEMENT_FEATURES`: how many agree and disagree, the summed logit
reliability of those that agree and of those that disagree, the strongest of each, whether it is the
earlier answers' plurality, MinHash similarity of the texts, which is what code has instead of a
final-answer key). Two learners -- histogram gradient-boosted trees (model index categorical) and an
L2 logistic regression (standardised features, per-model intercepts) -- are fitted on 3 job folds;
their out-of-fold scores are blended per model with the simplex weights of least Brier score (as the
ex-ante ``switchyard`` blends its scorers) and a Platt map per model is fitted on the blend
(:class:`scheduler.predictor.calibration.Calibrator`). ``posthoc-trees`` and ``posthoc-linear`` are
the single learners. The task prior is each model's plain training rate on the task, the same for
every row of a task: a leave-one-out rate would differ by the row's own outcome, a leak the trees
find at once.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from scheduler.errors import InvalidRequest
from scheduler.predictor.answers import ANSWER_FEATURES, SIGNATURE_SIZE, read_answer, read_prompt
from scheduler.predictor.base import NotFitted, PredictorError
from scheduler.predictor.calibrated import blend_weights
from scheduler.predictor.calibration import CalibrationMethod, Calibrator, logit
from scheduler.predictor.posthoc_features import (
    AGREEMENT_FEATURES, AnswerTable, AnswerTextModel, agreement_features, earlier_sets,
)
# The learners' classes are named here too, so estimators pickled before they moved still load.
from scheduler.predictor.posthoc_learners import _Component, _Logistic, _Trees
from scheduler.predictor.task_prior import TaskPrior

POSTHOC_FORMAT_VERSION = 1
_MAGIC = "switchyard-posthoc"

QUERY_FEATURES: tuple[str, ...] = (
    *ANSWER_FEATURES, "ex_ante_logit", "prior_logit", "text_score", *AGREEMENT_FEATURES, "model",
)


class UnknownPosthoc(InvalidRequest):
    """No post-hoc estimator is registered under that name."""


class PosthocEstimator:
    """Base: reads answers, builds query features, fits raw learners, blends and calibrates them."""

    name = "abstract"
    #: the raw learners (``trees``, ``logistic``), blended per model by out-of-fold Brier
    components: tuple[str, ...] = ()

    def __init__(self, singles: int = 3, larger: int = 2, folds: int = 3, seed: int = 0,
                 calibration: CalibrationMethod = "platt", use_ex_ante: bool = True,
                 drop_features: Sequence[str] = (), threads: int | None = 1, use_text: bool = True) -> None:
        #: OpenMP threads for the trees (None: the library's default). One by default: on a shared
        #: 2-core machine two threads spin-waiting for each other made a fit 6x slower.
        self.threads = threads
        self.use_text = use_text
        self._text: AnswerTextModel | None = None
        self.singles = singles
        self.larger = larger
        self.folds = folds
        self.seed = seed
        self.use_ex_ante = use_ex_ante
        unknown = set(drop_features) - set(QUERY_FEATURES)
        if unknown:
            raise PredictorError(f"unknown post-hoc features {sorted(unknown)}")
        self.drop_features = tuple(drop_features)
        self.calibrator = Calibrator(calibration)
        self.task_prior = TaskPrior()
        self.model_names: tuple[str, ...] = ()
        self.label_counts: dict[str, int] = {}
        self.fitted_with_ex_ante = False
        self._keep = np.ones(len(QUERY_FEATURES), dtype=bool)
        self._parts: list[_Component] = []
        self.weights_ = np.zeros((0, 0))   # (M, len(components))
        self.oof_: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _component(self, name: str) -> _Component:
        if name == "trees":
            return _Trees(self.seed)
        if name == "logistic":
            return _Logistic()
        raise PredictorError(f"unknown post-hoc component {name!r}")

    @property
    def fitted(self) -> bool:
        return bool(self.model_names)

    # -- reading answers -------------------------------------------------------------------------
    def _table(self, prompts: Sequence[str], responses: np.ndarray, tasks: Sequence[str] | None,
               ex_ante_p: np.ndarray | None, model_names: Sequence[str]) -> AnswerTable:
        n, m = len(prompts), len(model_names)
        responses = np.asarray(responses, dtype=object)
        if responses.shape != (n, m):
            raise PredictorError(f"responses has shape {responses.shape}, expected ({n}, {m})")
        answered = np.zeros((n, m), dtype=bool)
        keys = np.zeros((n, m), dtype=np.int64)
        feats = np.zeros((n, m, len(ANSWER_FEATURES)), dtype=np.float32)
        sigs = np.zeros((n, m, SIGNATURE_SIZE), dtype=np.uint64)
        for i, prompt in enumerate(prompts):
            reading = None
            for j in range(m):
                text = responses[i, j]
                if text is None:
                    continue
                if not isinstance(text, str):
                    raise PredictorError(f"answer of job {i}, model {model_names[j]!r} is not a string")
                reading = reading or read_prompt(prompt)
                ans = read_answer(text, reading)
                answered[i, j], keys[i, j], feats[i, j], sigs[i, j] = True, ans.key, ans.features, ans.signature
        if ex_ante_p is None:
            ex = np.full((n, m), np.nan)
        else:
            ex = np.asarray(ex_ante_p, dtype=float)
            if ex.shape != (n, m):
                raise PredictorError(f"ex_ante_p has shape {ex.shape}, expected ({n}, {m})")
        prior = self.task_prior.rates(None if tasks is None else list(tasks), n)
        text_score = np.zeros((n, m), dtype=np.float32)
        if self._text is not None and answered.any():
            ii, jj = np.nonzero(answered)
            text_score[ii, jj] = self._text.score([responses[i, j] for i, j in zip(ii, jj)], jj)
        return AnswerTable(tuple(model_names), answered, keys, feats, sigs, ex, prior, text_score)

    def featurize(self, prompts: Sequence[str], responses: np.ndarray | Sequence[Sequence[str | None]],
                  tasks: Sequence[str] | None = None, ex_ante_p: np.ndarray | None = None) -> AnswerTable:
        """Read N jobs' answers (``responses`` (N, M), None = not run) once, for :meth:`predict_table`."""
        if not self.fitted:
            raise NotFitted()
        if tasks is not None and len(tasks) != len(prompts):
            raise PredictorError(f"got {len(tasks)} tasks for {len(prompts)} prompts")
        if self.fitted_with_ex_ante and ex_ante_p is None:
            raise PredictorError("this estimator was fitted with ex-ante p as a feature; pass ex_ante_p")
        return self._table(prompts, np.asarray(responses, dtype=object), tasks,
                           ex_ante_p if self.fitted_with_ex_ante else None, self.model_names)

    def query_features(self, table: AnswerTable, rows: np.ndarray, models: np.ndarray, earlier: np.ndarray
                       ) -> np.ndarray:
        """(K, len(QUERY_FEATURES)) float32 features of K queries (before dropping any)."""
        idx_feats = table.features[rows, models]
        ex = table.ex_ante[rows, models]
        prior = table.prior[rows, models]
        ex_logit = logit(np.where(np.isnan(ex), prior, ex))
        agree = agreement_features(table, rows, models, earlier)
        text = table.text_score[rows, models]
        return np.column_stack([idx_feats, ex_logit, logit(prior), text, agree, models]).astype(np.float32)

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, prompts: Sequence[str], scores: np.ndarray, responses: np.ndarray, model_names: Sequence[str],
            tasks: Sequence[str] | None = None, ex_ante_p: np.ndarray | None = None,
            keep_oof: bool = False) -> PosthocEstimator:
        """Learn from graded answers: ``scores`` (N, M) in [0, 1] (nan = unobserved), ``responses``
        (N, M) answer texts (None = not logged; such cells are not learnt from). ``ex_ante_p`` (N, M):
        the ex-ante predictor's *out-of-fold* p on these rows (:func:`cross_fit_ex_ante`; nan where
        unknown, e.g. production's stored ``predicted_quality`` of the chosen model only), or None.

        ``keep_oof`` keeps the training queries and their out-of-fold calibrated p in ``oof_``
        (rows, models, earlier, p): an honest sample of what the estimator says about answers it
        did not learn from, for a cascade that plans on the distribution of p_post. It is not saved."""
        with threadpool_limits(limits=self.threads):
            return self._fit(prompts, scores, responses, model_names, tasks, ex_ante_p, keep_oof)

    def _fit(self, prompts: Sequence[str], scores: np.ndarray, responses: np.ndarray, model_names: Sequence[str],
             tasks: Sequence[str] | None, ex_ante_p: np.ndarray | None, keep_oof: bool) -> PosthocEstimator:
        scores = np.asarray(scores, dtype=float)
        n, m = len(prompts), len(model_names)
        if scores.shape != (n, m):
            raise PredictorError(f"scores has shape {scores.shape}, expected ({n}, {m})")
        responses = np.asarray(responses, dtype=object)
        if responses.shape != (n, m):
            raise PredictorError(f"responses has shape {responses.shape}, expected ({n}, {m})")
        if tasks is not None and len(tasks) != n:
            raise PredictorError(f"got {len(tasks)} tasks for {n} prompts")
        usable = ~np.isnan(scores) & np.vectorize(lambda x: x is not None, otypes=[bool])(responses)
        if usable.sum() < 20:
            raise PredictorError(f"need at least 20 graded answers, got {int(usable.sum())}")
        if np.ptp(scores[usable]) == 0:
            raise PredictorError("every graded answer has the same score; nothing to learn")
        task_list = None if tasks is None else list(tasks)
        self.task_prior.fit(task_list, np.where(usable, scores, np.nan))
        self.fitted_with_ex_ante = self.use_ex_ante and ex_ante_p is not None
        # The task prior here is the plain fitted rate, the same for every row of a task: a
        # leave-one-out rate would differ by the row's own outcome, and the trees find that leak.
        self._text = None
        graded = responses.copy()
        graded[~usable] = None
        table = self._table(prompts, graded, task_list,
                            ex_ante_p if self.fitted_with_ex_ante else None, model_names)
        folds = min(self.folds, max(2, n // 10))
        if self.use_text:
            # out-of-fold text logits for the training rows (the trees must not see in-sample ones)
            ii, jj = np.nonzero(usable)
            self._text = AnswerTextModel()
            oof_text = self._text.fit_oof([responses[i, j] for i, j in zip(ii, jj)], jj, scores[ii, jj], ii,
                                          m, folds, self.seed)
            table.text_score[ii, jj] = oof_text
        rows, models, earlier = earlier_sets(usable, self.singles, self.larger, self.seed)
        x_all = self.query_features(table, rows, models, earlier)
        self._keep = np.array([f not in self.drop_features for f in QUERY_FEATURES])
        if not self.fitted_with_ex_ante:
            self._keep[QUERY_FEATURES.index("ex_ante_logit")] = False
        if not self.use_text:
            self._keep[QUERY_FEATURES.index("text_score")] = False
        x = x_all[:, self._keep]
        y = scores[rows, models]
        self.model_names = tuple(model_names)
        model_column = bool(self._keep[-1])   # the model index, when kept, is the last column
        count = len(self.components)
        oof = np.full((count, rows.size), np.nan)
        for _, te_jobs in KFold(folds, shuffle=True, random_state=self.seed).split(np.arange(n)):
            test = np.isin(rows, te_jobs)
            for c, name in enumerate(self.components):
                part = self._component(name)
                part.fit(x[~test], y[~test], models[~test], m, model_column)
                oof[c, test] = part.predict(x[test], models[test])
        self._parts = []
        for name in self.components:
            part = self._component(name)
            part.fit(x, y, models, m, model_column)
            self._parts.append(part)
        at = np.arange(rows.size)
        ys = np.full((rows.size, m), np.nan)
        ys[at, models] = y
        if count > 1:
            stacked = np.full((count, rows.size, m), np.nan)
            stacked[:, at, models] = oof
            self.weights_ = blend_weights(np.nan_to_num(stacked, nan=0.5), ys)
        else:
            self.weights_ = np.ones((m, 1))
        raw = np.full((rows.size, m), np.nan)
        raw[at, models] = np.einsum("ck,kc->k", oof, self.weights_[models])
        self.calibrator.fit(raw, ys)
        self.oof_ = None
        if keep_oof:
            p_oof = self.calibrator.transform(np.nan_to_num(raw, nan=0.5))[at, models]
            self.oof_ = (rows, models, earlier, p_oof)
        self.label_counts = {name: int(usable[:, j].sum()) for j, name in enumerate(model_names)}
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["oof_"] = None   # training-time diagnostics stay out of saved versions
        return state

    def _raw_predict(self, x: np.ndarray, models: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape[0])
        for c, part in enumerate(self._parts):
            w = self.weights_[models, c]
            if w.any():
                out += w * part.predict(x, models)
        return out

    # -- prediction ------------------------------------------------------------------------------
    def _model_index(self, models: Sequence[int | str] | np.ndarray) -> np.ndarray:
        col = {name: j for j, name in enumerate(self.model_names)}
        out = np.empty(len(models), dtype=np.int64)
        for q, mdl in enumerate(models):
            if isinstance(mdl, str):
                if mdl not in col:
                    raise PredictorError(f"unknown model {mdl!r}; fitted on {list(self.model_names)}")
                out[q] = col[mdl]
            else:
                out[q] = int(mdl)
        if out.size and (out.min() < 0 or out.max() >= len(self.model_names)):
            raise PredictorError("model index out of range")
        return out

    def predict_table(self, table: AnswerTable, rows: Sequence[int] | np.ndarray,
                      models: Sequence[int | str] | np.ndarray, earlier: np.ndarray | None = None) -> np.ndarray:
        """(K,) calibrated p that model ``models[k]``'s answer to job ``rows[k]`` is good, given the
        answers of the models marked in ``earlier[k]`` (None: no earlier answers). nan where that
        model's answer is not in the table."""
        if not self.fitted:
            raise NotFitted()
        rows = np.asarray(rows, dtype=np.int64)
        midx = self._model_index(models)
        m = len(self.model_names)
        if earlier is None:
            earlier = np.zeros((rows.size, m), dtype=bool)
        earlier = np.asarray(earlier, dtype=bool)
        if earlier.shape != (rows.size, m):
            raise PredictorError(f"earlier has shape {earlier.shape}, expected ({rows.size}, {m})")
        if rows.size == 0:
            return np.zeros(0)
        x = self.query_features(table, rows, midx, earlier)[:, self._keep]
        with threadpool_limits(limits=self.threads):
            raw = self._raw_predict(x, midx)
        cal = np.full((rows.size, m), np.nan)
        cal[np.arange(rows.size), midx] = raw
        p = self.calibrator.transform(np.nan_to_num(cal, nan=0.5))[np.arange(rows.size), midx]
        return np.where(table.answered[rows, midx], p, np.nan)

    def predict(self, prompts: Sequence[str], models: Sequence[int | str], answers: Sequence[str],
                earlier_answers: Sequence[Mapping[str, str]] | None = None, tasks: Sequence[str] | None = None,
                ex_ante_p: np.ndarray | None = None) -> np.ndarray:
        """(K,) p for K (prompt, model, answer) queries, each with its ``{model: answer}`` of the
        models already run on that job (models the estimator was not fitted on are ignored).
        ``ex_ante_p``: (K, M), the job's ex-ante p for every model."""
        k = len(prompts)
        if not (len(models) == len(answers) == k) or (earlier_answers is not None and len(earlier_answers) != k):
            raise PredictorError("prompts, models, answers and earlier_answers must have the same length")
        midx = self._model_index(models)
        m = len(self.model_names)
        col = {name: j for j, name in enumerate(self.model_names)}
        responses = np.full((k, m), None, dtype=object)
        earlier = np.zeros((k, m), dtype=bool)
        for q in range(k):
            for name, text in (earlier_answers[q] if earlier_answers is not None else {}).items():
                if name in col and text is not None:
                    responses[q, col[name]] = text
                    earlier[q, col[name]] = True
            responses[q, midx[q]] = answers[q]
        table = self.featurize(prompts, responses, tasks, ex_ante_p)
        return self.predict_table(table, np.arange(k), midx, earlier)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "ex_ante_feature": self.fitted_with_ex_ante,
                "text_c": None if self._text is None else self._text.c_, "dropped": list(self.drop_features),
                "blend_weights": {name: dict(zip(self.components, [round(float(w), 2) for w in self.weights_[j]]))
                                  for j, name in enumerate(self.model_names)}}

    def save(self, path: str | Path) -> None:
        if not self.fitted:
            raise NotFitted()
        blob = {"magic": _MAGIC, "version": POSTHOC_FORMAT_VERSION, "name": self.name, "estimator": self}
        Path(path).write_bytes(pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL))


def load_posthoc(path: str | Path) -> PosthocEstimator:
    """Read an estimator written by :meth:`PosthocEstimator.save` (only load files you wrote: a pickle)."""
    try:
        blob = pickle.loads(Path(path).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise PredictorError(f"{path}: not a readable post-hoc estimator file ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("magic") != _MAGIC:
        raise PredictorError(f"{path}: not a Switchyard post-hoc estimator file")
    if blob.get("version") != POSTHOC_FORMAT_VERSION:
        raise PredictorError(f"{path}: post-hoc format version {blob.get('version')} but this Switchyard reads "
                             f"{POSTHOC_FORMAT_VERSION}; refit it")
    est = blob["estimator"]
    if not isinstance(est, PosthocEstimator):
        raise PredictorError(f"{path}: the file holds no post-hoc estimator")
    return est


_REGISTRY: dict[str, type[PosthocEstimator]] = {}
E = TypeVar("E", bound=type[PosthocEstimator])


def register_posthoc(name: str) -> Callable[[E], E]:
    def decorate(cls: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PredictorError(f"post-hoc estimator name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_posthoc() -> list[str]:
    return sorted(_REGISTRY)


def make_posthoc(name: str = "posthoc", **params: Any) -> PosthocEstimator:
    """A new, unfitted post-hoc estimator of the registered kind ``name``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownPosthoc(f"unknown post-hoc estimator {name!r}; choose one of {available_posthoc()}") from None
    return cls(**params)


@register_posthoc("posthoc")
class BlendedPosthoc(PosthocEstimator):
    """The default: gradient-boosted trees and a logistic regression on the same features, blended
    per model with the simplex weights (steps of 0.1) that minimise the out-of-fold Brier score
    (as the ex-ante ``switchyard`` blends its scorers), then Platt-calibrated. On the train splits
    the two were within 0.01 of AUC of each other (the trees a little better in Brier on
    RouterBench, the logistic model on GSM8K); the blend lets cross-validation pick per model."""

    components = ("trees", "logistic")


@register_posthoc("posthoc-trees")
class TreesPosthoc(PosthocEstimator):
    """Gradient-boosted trees alone."""

    components = ("trees",)


@register_posthoc("posthoc-linear")
class LinearPosthoc(PosthocEstimator):
    """The logistic regression alone (the fastest to fit)."""

    components = ("logistic",)


def cross_fit_ex_ante(predictor_name: str, prompts: Sequence[str], scores: np.ndarray,
                      output_tokens: np.ndarray | None, model_names: Sequence[str],
                      tasks: Sequence[str] | None = None, folds: int = 3, seed: int = 0,
                      **params: Any) -> np.ndarray:
    """(N, M) out-of-fold ex-ante p on training rows: the post-hoc estimator must learn how far to
    trust the ex-ante p on rows the ex-ante predictor did not see, as it will be at prediction time."""
    from scheduler.predictor.base import make_predictor

    n = len(prompts)
    out = np.full((n, len(model_names)), np.nan)
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(np.arange(n)):
        pred = make_predictor(predictor_name, **params).fit(
            _pick(prompts, tr), scores[tr], None if output_tokens is None else output_tokens[tr], model_names,
            tasks=None if tasks is None else _pick(tasks, tr))
        out[te] = pred.predict(_pick(prompts, te), tasks=None if tasks is None else _pick(tasks, te)).p_success
    return out


def _pick(items: Sequence[str], idx: np.ndarray) -> list[str]:
    return [items[i] for i in idx]
