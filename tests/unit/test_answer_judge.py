"""The production answer judge (scheduler/learning/judge.py) fitted on labelled answers, as the
learner fits it from job history: the shipped GSM8K sample's answers stand in for attempts."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from scheduler.datasets import read_dataset
from scheduler.learning.judge import MIN_JUDGE_LABELS, PosthocJudge, fit_posthoc_judge
from scheduler.predictor import PredictorError
from scheduler.predictor.calibration import within_task_auc
from scheduler.storage.labels import LabelledOutcome

DATA = Path(__file__).resolve().parents[1] / "data"
MIXTRAL, GPT4 = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
FLEET = (MIXTRAL, GPT4, "not-in-history")


def labels(split: str) -> list[LabelledOutcome]:
    """One label per (record, model) with an answer: what LabelStore.history returns for jobs
    that ran both models (a cascade) or one."""
    data = read_dataset(DATA / "gsm8k_sample.jsonl")
    return [LabelledOutcome(record.prompt, model, outcome.score, outcome.output_tokens, outcome.response,
                            job_id=record.id, attempt=k + 1)
            for record in data.split(split) for k, (model, outcome) in enumerate(record.outcomes.items())
            if outcome.response is not None]


@pytest.fixture(scope="module")
def judge() -> PosthocJudge:
    return fit_posthoc_judge(labels("train"), FLEET)


def test_the_judge_scores_held_out_answers_better_than_chance(judge: PosthocJudge) -> None:
    test = labels("test")
    by_job: dict[str, dict[str, LabelledOutcome]] = {}
    for label in test:
        by_job.setdefault(str(label.job_id), {})[label.model] = label
    p, y, task = [], [], []
    for answers in by_job.values():
        if MIXTRAL not in answers:
            continue
        first = answers[MIXTRAL]   # the cheap model's answer alone: the first step of a cascade
        judgement = judge.judge(first.prompt_text, {MIXTRAL: str(first.answer)}, {})
        assert set(judgement.p_post) == {MIXTRAL} and judgement.best_model == MIXTRAL
        assert 0.0 <= judgement.best_p <= 1.0
        p.append(judgement.best_p)
        y.append(first.score)
        task.append("gsm8k")
    assert len(p) >= 10 and len(set(y)) == 2
    assert within_task_auc(np.array(p), np.array(y), task) > 0.6


def test_two_answers_are_judged_together_and_the_best_is_the_highest(judge: PosthocJudge) -> None:
    test = [label for label in labels("test")]
    jobs: dict[str, dict[str, str]] = {}
    prompts: dict[str, str] = {}
    for label in test:
        jobs.setdefault(str(label.job_id), {})[label.model] = str(label.answer)
        prompts[str(label.job_id)] = label.prompt_text
    both = [job for job, answers in jobs.items() if len(answers) == 2]
    assert both
    for job in both[:5]:
        answers = jobs[job] | {"unknown-model": "42"}   # a model it was not fitted on is ignored
        judgement = judge.judge(prompts[job], answers, {MIXTRAL: 0.4, GPT4: 0.9})
        assert set(judgement.p_post) == {MIXTRAL, GPT4}
        assert judgement.best_p == max(judgement.p_post.values())


def test_the_judge_survives_a_pickle_round_trip(judge: PosthocJudge) -> None:
    label = labels("test")[0]
    again = pickle.loads(pickle.dumps(judge))
    answers = {label.model: str(label.answer)}
    assert again.judge(label.prompt_text, answers, {}).p_post == judge.judge(label.prompt_text, answers, {}).p_post


def test_too_few_labelled_answers_raise_and_unknown_models_cannot_be_judged(judge: PosthocJudge) -> None:
    few = labels("train")[:MIN_JUDGE_LABELS - 1]
    with pytest.raises(PredictorError, match="at least"):
        fit_posthoc_judge(few, FLEET)
    # labels without an answer (jobs from before answers were kept) do not count
    blank = [LabelledOutcome(label.prompt_text, label.model, label.score, None) for label in labels("train")]
    with pytest.raises(PredictorError, match="at least"):
        fit_posthoc_judge(blank, FLEET)
    with pytest.raises(PredictorError, match="knows none"):
        judge.judge("2+2?", {"unknown-model": "4"}, {})


def test_stored_ex_ante_p_is_a_feature_the_judge_then_needs(judge: PosthocJudge) -> None:
    with_p = [LabelledOutcome(label.prompt_text, label.model, label.score, None, label.answer, label.job_id,
                              label.attempt, 0.9 if label.model == GPT4 else 0.5) for label in labels("train")]
    fitted = fit_posthoc_judge(with_p, FLEET)
    assert fitted.estimator.fitted_with_ex_ante and not judge.estimator.fitted_with_ex_ante
    label = labels("test")[0]
    p = fitted.judge(label.prompt_text, {label.model: str(label.answer)}, {}).best_p   # unknown p: nan, allowed
    assert 0.0 <= p <= 1.0
