"""The production answer judge: the post-hoc estimator (scheduler/predictor/posthoc.py) behind
the ``AnswerJudge`` protocol (scheduler/judging.py) that the scheduler's review calls.

It is fitted from labelled job history (``LabelStore.history``: one scored attempt per row, with
its answer): one row per job, one column per fleet model, each attempt's answer in ``responses``
and its score in ``scores``; the ex-ante p of a cell is the p stored with the attempt (predicted
before the answer existed), nan where none was stored. A job that ran one model teaches the
first-answer case, a cascaded job its second opinions too. Imported outcome data with answers
(``answers_from_outcomes``: one job per record, every model's answer) teaches it before any job
has run, which is what ``switchyard predictor fit --dataset FILE --cascade`` does.

Judging a job's answers: each answering model's answer is scored given the *other* answers of
the job (agreement counts), so the best answer is the one with the highest p_post.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from scheduler.cascade import best_answer
from scheduler.datasets.records import OutcomeRecord
from scheduler.judging import Judgement
from scheduler.predictor import PredictorError
from scheduler.predictor.posthoc import PosthocEstimator, make_posthoc

# The post-hoc estimator needs at least this many graded answers (it refuses fewer itself); below
# it the learner keeps the judge it has (or none: the review then accepts answers as they are).
MIN_JUDGE_LABELS = 20


class Label(Protocol):
    """What a labelled attempt carries (scheduler/storage/labels.py: ``LabelledOutcome``)."""

    @property
    def prompt_text(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def answer(self) -> str | None: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def ex_ante_p(self) -> float | None: ...


@dataclass(frozen=True)
class DatasetAnswer:
    """A graded answer from imported outcome data (a ``Label``): one job per record."""

    prompt_text: str
    model: str
    score: float
    answer: str | None
    job_id: str | None
    ex_ante_p: float | None = None


def answers_from_outcomes(records: Sequence[OutcomeRecord]) -> list[DatasetAnswer]:
    """The answers logged in outcome data (``outcomes[MODEL].response``) as labels the judge learns
    from beside the job history; a record's answers share its job, so their agreement is learnt."""
    return [DatasetAnswer(record.prompt, model, outcome.score, outcome.response, f"dataset:{record.id}")
            for record in records for model, outcome in record.outcomes.items() if outcome.response is not None]


class PosthocJudge:
    """An ``AnswerJudge`` over a fitted post-hoc estimator (picklable: the learner saves it)."""

    def __init__(self, estimator: PosthocEstimator, labels: int) -> None:
        self.estimator = estimator
        self.labels = labels   # graded answers it was fitted on

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.estimator.model_names)

    def judge(self, prompt: str, answers: Mapping[str, str], ex_ante_p: Mapping[str, float]) -> Judgement:
        """p_post of each answer (in the order they ran) given the job's other answers; the best is
        the highest, the later one on a tie. Answers of
        models the judge was not fitted on are neither judged nor weighed; a job with none it
        knows raises PredictorError (the review then accepts the latest answer, saying why)."""
        names = self.model_names
        known = [model for model in answers if model in names]
        if not known:
            raise PredictorError(f"the judge knows none of the models that answered ({', '.join(answers)}); "
                                 f"it was fitted on {', '.join(names)}")
        ex_ante = None
        if self.estimator.fitted_with_ex_ante:
            row = np.array([float(ex_ante_p[name]) if name in ex_ante_p else np.nan for name in names])
            ex_ante = np.tile(row, (len(known), 1))
        p = self.estimator.predict(
            [prompt] * len(known), known, [answers[model] for model in known],
            [{other: answers[other] for other in known if other != model} for model in known],
            ex_ante_p=ex_ante)
        p_post = {model: float(value) for model, value in zip(known, p, strict=True)}
        # The cascade's rule (the replay's too): the highest p, the later answer on a tie.
        return Judgement(p_post=p_post, best_model=known[int(best_answer(np.asarray(p)))])


def fit_posthoc_judge(history: Sequence[Label], model_names: Sequence[str], kind: str = "posthoc") -> PosthocJudge:
    """Fit a judge on labelled attempts (see the module doc). Raises PredictorError while there
    are too few labelled answers of the fleet's models (or nothing to learn)."""
    column = {name: j for j, name in enumerate(model_names)}
    usable = [label for label in history if label.answer is not None and label.model in column]
    if len(usable) < MIN_JUDGE_LABELS:
        raise PredictorError(f"the answer judge needs at least {MIN_JUDGE_LABELS} labelled answers of the fleet's "
                             f"models; {len(usable)} so far")
    row_of: dict[str, int] = {}
    prompts: list[str] = []
    for index, label in enumerate(usable):
        key = label.job_id if label.job_id is not None else f"#{index}"
        if key not in row_of:
            row_of[key] = len(prompts)
            prompts.append(label.prompt_text)
    n, m = len(prompts), len(model_names)
    scores = np.full((n, m), np.nan)
    responses = np.full((n, m), None, dtype=object)
    ex_ante = np.full((n, m), np.nan)
    # History is newest first: the first label of a (job, model) cell is its newest; keep that one.
    for index, label in enumerate(usable):
        i = row_of[label.job_id if label.job_id is not None else f"#{index}"]
        j = column[label.model]
        if responses[i, j] is not None:
            continue
        scores[i, j] = float(np.clip(label.score, 0.0, 1.0))
        responses[i, j] = label.answer
        if label.ex_ante_p is not None:
            ex_ante[i, j] = float(label.ex_ante_p)
    known_p = None if np.isnan(ex_ante).all() else ex_ante
    with warnings.catch_warnings():
        # A fleet model with no label yet has an empty column (its task prior is then the others').
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        estimator = make_posthoc(kind).fit(prompts, scores, responses, list(model_names), ex_ante_p=known_p)
    return PosthocJudge(estimator, len(usable))
