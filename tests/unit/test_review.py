"""The review of a cascade step (scheduler/review.py), pure: answers and a judge in, a verdict out.
The judge here is a table of p per model (the real judge is tested in test_answer_judge.py and,
with the review in production, in tests/integration/test_cascades.py)."""
from __future__ import annotations

from collections.abc import Mapping

import pytest

from scheduler.judging import Judgement
from scheduler.plan import Escalation
from scheduler.review import Answer, JobUnderReview, review


class TableJudge:
    def __init__(self, p: Mapping[str, float]) -> None:
        self.p = p

    def judge(self, prompt: str, answers: Mapping[str, str], ex_ante_p: Mapping[str, float]) -> Judgement:
        p_post = {model: self.p[model] for model in answers}
        return Judgement(p_post, max(p_post, key=lambda m: p_post[m]))


class BrokenJudge:
    def judge(self, prompt: str, answers: Mapping[str, str], ex_ante_p: Mapping[str, float]) -> Judgement:
        raise ValueError("unknown model")


SMALL = Answer(1, "small", "4")
CASCADE = (Escalation(0.55, "mid"), Escalation(0.7, "big"))


def job(*answers: Answer, **fields: object) -> JobUnderReview:
    return JobUnderReview("j", "2+2?", answers, **{"cascade": CASCADE, **fields})  # type: ignore[arg-type]


def test_a_weak_answer_escalates_to_the_next_model_with_the_rest_of_the_cascade() -> None:
    verdict = review(job(SMALL), TableJudge({"small": 0.31}), {"small": 0.5}, "v1")
    assert (verdict.escalate_to, verdict.cascade_rest, verdict.accept) == ("mid", CASCADE[1:], None)
    assert verdict.reason == "escalate: post-hoc p=0.31 < 0.55; next mid"
    [attempt] = verdict.attempts
    assert (attempt.decision, attempt.p_post, attempt.ex_ante_p, verdict.judge) == ("escalated", 0.31, 0.5, "v1")


def test_a_good_enough_answer_is_accepted() -> None:
    verdict = review(job(SMALL), TableJudge({"small": 0.6}), {}, "v1")
    assert (verdict.accept, verdict.escalate_to) == (1, None)
    assert verdict.reason == "accept: post-hoc p=0.60 >= 0.55 (small)"


@pytest.mark.parametrize(("fields", "why"), [({"cascade_allowed": False}, "the job may not cascade"),
                                             ({"may_escalate": False}, "its batch has ended")])
def test_a_job_that_may_not_cascade_or_whose_batch_ended_never_escalates(fields: dict[str, bool], why: str) -> None:
    verdict = review(job(SMALL, **fields), TableJudge({"small": 0.1}), {})
    assert verdict.accept == 1 and verdict.escalate_to is None
    assert verdict.reason == f"accept: post-hoc p=0.10 < 0.55, but {why}"


def test_after_the_last_step_the_best_answer_wins_and_the_others_are_marked() -> None:
    mid = Answer(2, "mid", "5", "escalated", "escalate: post-hoc p=0.40 < 0.70; next big")
    small = Answer(1, "small", "4", "escalated", "escalate: post-hoc p=0.31 < 0.55; next mid")
    big = Answer(3, "big", "5")
    verdict = review(job(small, mid, big, cascade=()), TableJudge({"small": 0.2, "mid": 0.8, "big": 0.6}), {})
    assert verdict.accept == 2
    assert verdict.reason == "accept: best of 3 answers, mid p=0.80 (small p=0.20, big p=0.60)"
    decisions = {a.attempt: (a.decision, a.reason) for a in verdict.attempts}
    assert decisions[1] == (None, None)   # an earlier escalated answer keeps its decision
    assert decisions[2] == ("accepted", f"{mid.reason}; accepted after all: {verdict.reason}")
    assert decisions[3] == ("rejected", f"not chosen: {verdict.reason}")


def test_a_next_model_that_already_ran_is_skipped() -> None:
    mid = Answer(2, "mid", "5", "escalated", "r")
    verdict = review(job(SMALL, mid, cascade=CASCADE), TableJudge({"small": 0.1, "mid": 0.2}), {})
    assert (verdict.escalate_to, verdict.cascade_rest) == ("big", ())


def test_without_a_judge_or_with_one_that_fails_the_latest_answer_is_accepted() -> None:
    unjudged = review(job(SMALL), None, {})
    assert unjudged.accept == 1 and unjudged.judge is None
    assert unjudged.reason == "accept: no answer judge is fitted yet, so nothing escalates; planned next: mid below p=0.55"
    broken = review(job(SMALL), BrokenJudge(), {}, "v1")
    assert broken.accept == 1 and broken.reason.startswith(
        "accept: the answer judge could not judge it (ValueError: unknown model), so nothing escalates")
