"""Cascades: judge a job's answer before paying for a bigger model (issue 12).

This module is the contract between the decision (the policy plans cascades: an Assignment's
``cascade`` of Escalation steps, scheduler/plan.py) and production (after a worker writes an
answer, the scheduler judges it and either accepts it or sends the job to the next model).

The judge is fitted with the predictors (scheduler/learning/) and wraps the post-hoc estimator
(scheduler/predictor/posthoc.py). Implementations live beside this protocol; the policy and the
production review both call ``judge`` so that "is this answer good enough?" has one answer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Judgement:
    """What the answers of a job so far are worth."""

    p_post: dict[str, float]   # per model that answered: the calibrated chance its answer is good
    best_model: str            # the answer to accept if the job stops now (the highest p_post)

    @property
    def best_p(self) -> float:
        return self.p_post[self.best_model]


class AnswerJudge(Protocol):
    def judge(self, prompt: str, answers: Mapping[str, str], ex_ante_p: Mapping[str, float]) -> Judgement:
        """Judge every answer of one job given all of them (agreement counts) and each answering
        model's ex-ante p (what the predictor promised before the answer was seen)."""
        ...
