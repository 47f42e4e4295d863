"""What the post-hoc estimator reads from answers (scheduler/predictor/posthoc.py): the table of
N jobs' answers read once, the training queries (job, model, earlier answers), how a model's answer
agrees with the earlier ones, and what its wording says (a TF-IDF logistic model)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from scheduler.predictor.calibration import logit
from scheduler.predictor.posthoc_learners import _binary, _binary_rows

_CHUNK = 16_384

AGREEMENT_FEATURES: tuple[str, ...] = (
    "n_earlier", "n_agree", "n_disagree", "support", "opposition", "max_rel_agree", "max_rel_disagree",
    "plurality", "in_plurality", "distinct_earlier", "sim_mean", "sim_max", "sim_rel",
)
TEXT_C_GRID = (0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class AnswerTable:
    """N jobs' answers read once (:meth:`PosthocEstimator.featurize`); columns in ``model_names`` order."""

    model_names: tuple[str, ...]
    answered: np.ndarray     # (N, M) bool: the model's answer is known
    keys: np.ndarray         # (N, M) int64: final-answer key, 0 = none read
    features: np.ndarray     # (N, M, F) float32: the answer's own reading (ANSWER_FEATURES)
    signatures: np.ndarray   # (N, M, S) uint64: MinHash of the answer's tokens
    ex_ante: np.ndarray      # (N, M) float: the ex-ante p (nan when not given)
    prior: np.ndarray        # (N, M) float: the task prior (each model's training rate on the job's task)
    text_score: np.ndarray   # (N, M) float32: logit of the answer-text model (0 when it is not used)

    @property
    def num_jobs(self) -> int:
        return int(self.answered.shape[0])


def earlier_sets(answered: np.ndarray, singles: int = 3, larger: int = 2, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training queries from N x M answered cells: (rows, models, earlier (K, M) bool).

    Every answered (job, k) gets the empty set, up to ``singles`` single other answered models
    and ``larger`` random sets of 2 or more (duplicates dropped), so the estimator sees first
    answers, second opinions and later cascade steps alike."""
    rng = np.random.default_rng(seed)
    n, m = answered.shape
    rows: list[int] = []
    models: list[int] = []
    sets: list[np.ndarray] = []
    for i in range(n):
        have = np.flatnonzero(answered[i])
        for k in have:
            others = have[have != k]
            chosen: list[tuple[int, ...]] = [()]
            if others.size:
                for j in rng.permutation(others)[:singles]:
                    chosen.append((int(j),))
                if others.size >= 2:
                    for _ in range(larger):
                        size = int(rng.integers(2, others.size + 1))
                        chosen.append(tuple(sorted(int(x) for x in rng.choice(others, size, replace=False))))
            for subset in dict.fromkeys(chosen):
                mask = np.zeros(m, dtype=bool)
                mask[list(subset)] = True
                rows.append(i)
                models.append(int(k))
                sets.append(mask)
    earlier = np.array(sets, dtype=bool).reshape(len(sets), m)
    return np.array(rows, dtype=np.int64), np.array(models, dtype=np.int64), earlier


def agreement_features(table: AnswerTable, rows: np.ndarray, models: np.ndarray, earlier: np.ndarray
                       ) -> np.ndarray:
    """(K, len(AGREEMENT_FEATURES)) float32: how model k's answer relates to the earlier answers."""
    out = np.zeros((rows.size, len(AGREEMENT_FEATURES)), dtype=np.float32)
    for lo in range(0, rows.size, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        out[sl] = _agreement_chunk(table, rows[sl], models[sl], earlier[sl])
    return out


def _agreement_chunk(table: AnswerTable, rows: np.ndarray, models: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    k = rows.size
    idx = np.arange(k)
    keys = table.keys[rows]                                           # (K, M)
    own = keys[idx, models]                                           # (K,)
    avail = earlier & table.answered[rows]
    avail[idx, models] = False
    rel = np.where(np.isnan(table.ex_ante[rows]), table.prior[rows], table.ex_ante[rows])
    rel_logit = logit(rel)
    keyed = avail & (keys != 0)
    has_own = (own != 0)[:, None]
    agree = keyed & has_own & (keys == own[:, None])
    disagree = keyed & has_own & (keys != own[:, None])
    eq = keyed[:, :, None] & keyed[:, None, :] & (keys[:, :, None] == keys[:, None, :])
    group = eq.sum(axis=2)                                            # (K, M) size of m's group
    plurality = group.max(axis=1)
    in_plurality = (agree & (group == plurality[:, None])).any(axis=1)
    distinct = np.where(keyed, 1.0 / np.maximum(group, 1), 0.0).sum(axis=1)
    sig = table.signatures[rows]                                      # (K, M, S)
    own_sig = sig[idx, models]                                        # (K, S)
    sim = (sig == own_sig[:, None, :]).mean(axis=2)
    sim_ok = avail & (sig.any(axis=2)) & own_sig.any(axis=1)[:, None]
    n_sim = sim_ok.sum(axis=1)
    sim_mean = np.where(sim_ok, sim, 0.0).sum(axis=1) / np.maximum(n_sim, 1)
    sim_max = np.where(sim_ok, sim, 0.0).max(axis=1)
    sim_rel = np.where(sim_ok, sim * rel, 0.0).max(axis=1)
    return np.column_stack([
        avail.sum(axis=1), agree.sum(axis=1), disagree.sum(axis=1),
        np.where(agree, rel_logit, 0.0).sum(axis=1), np.where(disagree, rel_logit, 0.0).sum(axis=1),
        np.where(agree, rel, 0.0).max(axis=1), np.where(disagree, rel, 0.0).max(axis=1),
        plurality, in_plurality, distinct, sim_mean, sim_max, sim_rel,
    ]).astype(np.float32)


class AnswerTextModel:
    """L2 logistic regression on the answer's word 1-2 gram TF-IDF (its tail) plus per-model
    intercepts: what the wording of an answer says about it, as one logit per answer. The penalty
    is chosen from :data:`TEXT_C_GRID` by out-of-fold log-loss (folds by job)."""

    def __init__(self, max_chars: int = 2_000, max_features: int = 50_000) -> None:
        self.max_chars = max_chars
        self.max_features = max_features
        self.c_ = float("nan")
        self._vec: TfidfVectorizer | None = None
        self._lr: LogisticRegression | None = None
        self._m = 0

    def _x(self, texts: Sequence[str], models: np.ndarray) -> sp.csr_matrix:
        assert self._vec is not None
        words = self._vec.transform([t[-self.max_chars:] for t in texts])
        onehot = sp.csr_matrix((np.ones(len(models)), (np.arange(len(models)), models)),
                               shape=(len(models), self._m))
        return sp.hstack([words, onehot], format="csr")

    def fit_oof(self, texts: Sequence[str], models: np.ndarray, y: np.ndarray, jobs: np.ndarray, m: int,
                folds: int, seed: int) -> np.ndarray:
        """Fit on all rows; return out-of-fold logits (folds over ``jobs``)."""
        self._m = m
        few = len(texts) < 50
        self._vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1 if few else 2,
                                    max_df=1.0 if few else 0.95, max_features=self.max_features,
                                    token_pattern=r"(?u)\b\w+\b|[^\w\s]", dtype=np.float32)
        try:
            self._vec.fit([t[-self.max_chars:] for t in texts])
        except ValueError:   # no vocabulary at all
            self._vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 1), dtype=np.float32).fit(
                [t[-self.max_chars:] or " " for t in texts])
        x = self._x(texts, models)
        xs, ys, ws = _binary(x, y)
        src = _binary_rows(y)
        job_of = jobs[src]
        uniq = np.unique(jobs)
        best: tuple[float, float, np.ndarray] | None = None
        splits = list(KFold(min(folds, max(2, uniq.size)), shuffle=True, random_state=seed).split(uniq))
        for c in TEXT_C_GRID:
            oof = np.zeros(len(y))
            for tr_jobs, te_jobs in splits:
                tr = np.isin(job_of, uniq[tr_jobs])
                te = np.isin(jobs, uniq[te_jobs])
                if np.ptp(ys[tr]) == 0:
                    oof[te] = 0.0
                    continue
                lr = LogisticRegression(C=c, max_iter=1000).fit(xs[tr], ys[tr], sample_weight=ws[tr])
                oof[te] = lr.decision_function(x[te])
            loss = float(np.mean(np.logaddexp(0.0, oof) - y * oof))
            if best is None or loss < best[0]:
                best = (loss, c, oof)
        assert best is not None
        self.c_ = best[1]
        self._lr = LogisticRegression(C=self.c_, max_iter=1000).fit(xs, ys, sample_weight=ws) if np.ptp(ys) else None
        return best[2]

    def score(self, texts: Sequence[str], models: np.ndarray) -> np.ndarray:
        if self._lr is None or not len(texts):
            return np.zeros(len(texts))
        return np.asarray(self._lr.decision_function(self._x(texts, models)))
