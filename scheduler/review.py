"""The review of a cascade step: accept the best answer so far, or escalate to the next model.

A job whose plan has a cascade (scheduler/plan.py: ``Assignment.cascade``) ends each run in
``reviewing`` (scheduler/storage/results.py). Between ticks the scheduler loads such jobs with
their answers so far and asks :func:`review` what to do; it is pure (answers, the remaining
steps and a judge in, a :class:`Verdict` out), and the store applies the verdict with a guarded
transition (scheduler/storage/reviews.py).

The rules, per job:

* Its answers are judged together (agreement counts) by the learner's current answer judge
  (scheduler/judging.py: ``AnswerJudge``): a calibrated p_post per answer and the best one.
* With a next step ``Escalation(accept_at, next_model)``: if the best p_post is at least
  ``accept_at`` the best answer is accepted (``accept: post-hoc p=0.71 >= 0.55``); else the job
  escalates to ``next_model`` (``escalate: post-hoc p=0.31 < 0.55``): it returns to the window
  with that model pinned and the rest of its cascade.
* Without a next step (the last model of its cascade has answered, or an escalation could not
  run) the best answer is accepted.
* Without a fitted judge nothing escalates: the latest answer is accepted and the reason says so.
  A judge that cannot judge the job (a model it was not fitted on) is treated the same way.
* A job that may not cascade (``cascade: false``), or whose batch has ended, never escalates.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.cascade import accepts
from scheduler.judging import AnswerJudge, Judgement
from scheduler.plan import Escalation

log = logging.getLogger(__name__)

ACCEPTED, ESCALATED, REJECTED = "accepted", "escalated", "rejected"


@dataclass(frozen=True)
class Answer:
    """One answered attempt of a job."""

    attempt: int
    model: str
    text: str
    decision: str | None = None    # what an earlier review decided about it (None: not reviewed yet)
    reason: str | None = None


@dataclass(frozen=True)
class JobUnderReview:
    job_id: str
    prompt_text: str
    answers: tuple[Answer, ...]             # in the order they ran
    cascade: tuple[Escalation, ...] = ()    # the plan's remaining steps
    cascade_allowed: bool = True
    may_escalate: bool = True               # False: its batch has ended (cancelled or expired)
    note: str | None = None                 # why the job is here without a next step (an escalation that failed)


@dataclass(frozen=True)
class AttemptVerdict:
    attempt: int
    p_post: float | None
    ex_ante_p: float | None
    decision: str | None = None   # None: leave the attempt's decision as it was
    reason: str | None = None


@dataclass(frozen=True)
class Verdict:
    job_id: str
    reason: str                          # the job's new assignment reason
    accept: int | None = None            # the attempt whose answer is the job's result
    escalate_to: str | None = None       # else: the next model, and the steps after it
    cascade_rest: tuple[Escalation, ...] = ()
    attempts: tuple[AttemptVerdict, ...] = field(default=())
    judge: str | None = None             # the judge version that judged


def review(job: JobUnderReview, judge: AnswerJudge | None, ex_ante_p: Mapping[str, float],
           judge_version: str | None = None) -> Verdict:
    """What to do with ``job`` now (see the module doc). ``ex_ante_p``: each answering model's p
    predicted from the prompt alone (what the judge weighs its answer's reading against)."""
    if not job.answers:   # nothing to accept (cannot happen through the worker: a review follows an answer)
        return Verdict(job.job_id, "review: no answer to judge", attempts=())
    latest = job.answers[-1]
    answers = {answer.model: answer.text for answer in job.answers}
    judgement: Judgement | None = None
    unjudged = "no answer judge is fitted yet"
    if judge is not None:
        try:
            judgement = judge.judge(job.prompt_text, answers, {m: ex_ante_p[m] for m in answers if m in ex_ante_p})
        except Exception as exc:  # noqa: BLE001 - a judge that cannot judge this job must not stall it
            log.warning("job %s: the answer judge failed (%s); accepting the latest answer", job.job_id, exc)
            unjudged = f"the answer judge could not judge it ({type(exc).__name__}: {exc})"
    p_of = dict(judgement.p_post) if judgement is not None else {}
    step = job.cascade[0] if job.cascade else None
    if judgement is None:
        planned = f"; planned next: {step.next_model} below p={step.accept_at:.2f}" if step is not None else ""
        reason = f"accept: {unjudged}, so nothing escalates{planned}"
        return _accept(job, latest, reason, p_of, ex_ante_p, judge_version)
    best = next(a for a in reversed(job.answers) if a.model == judgement.best_model) \
        if judgement.best_model in answers else latest
    best_p = p_of.get(best.model, float("nan"))
    others = ", ".join(f"{a.model} p={p_of[a.model]:.2f}" for a in job.answers
                       if a.model != best.model and a.model in p_of)
    versus = f" ({others})" if others else ""
    ran = {answer.model for answer in job.answers}
    next_step = next((s for s in job.cascade if s.next_model not in ran), None)
    if step is None or next_step is None:
        why = f"; {job.note}" if job.note else ""
        if len(job.answers) == 1:
            reason = f"accept: post-hoc p={best_p:.2f}, no further step{why}"
        else:
            reason = f"accept: best of {len(job.answers)} answers, {best.model} p={best_p:.2f}{versus}{why}"
        return _accept(job, best, reason, p_of, ex_ante_p, judge_version)
    if accepts(best_p, next_step.accept_at):
        reason = f"accept: post-hoc p={best_p:.2f} >= {next_step.accept_at:.2f} ({best.model}){versus}"
        return _accept(job, best, reason, p_of, ex_ante_p, judge_version)
    if not job.cascade_allowed or not job.may_escalate:
        why = "the job may not cascade" if not job.cascade_allowed else "its batch has ended"
        reason = f"accept: post-hoc p={best_p:.2f} < {next_step.accept_at:.2f}, but {why}"
        return _accept(job, best, reason, p_of, ex_ante_p, judge_version)
    reason = f"escalate: post-hoc p={best_p:.2f} < {next_step.accept_at:.2f}; next {next_step.next_model}"
    rest = job.cascade[job.cascade.index(next_step) + 1:]
    verdicts = tuple(AttemptVerdict(a.attempt, p_of.get(a.model), ex_ante_p.get(a.model),
                                    ESCALATED if a is latest else None, reason if a is latest else None)
                     for a in job.answers)
    return Verdict(job.job_id, reason, escalate_to=next_step.next_model, cascade_rest=rest, attempts=verdicts,
                   judge=judge_version)


def _accept(job: JobUnderReview, accepted: Answer, reason: str, p_of: Mapping[str, float],
            ex_ante_p: Mapping[str, float], judge_version: str | None) -> Verdict:
    """Accept ``accepted``'s answer. Its attempt becomes ``accepted`` (an earlier escalated answer
    keeps its first reason and says it was accepted after all); a later answer not chosen becomes
    ``rejected``; earlier ones keep their decision."""
    verdicts = []
    for answer in job.answers:
        decision: str | None = None
        why: str | None = None
        if answer is accepted:
            decision = ACCEPTED
            why = reason if answer.reason is None or answer.decision is None else \
                f"{answer.reason}; accepted after all: {reason}"
        elif answer.decision is None:
            decision, why = REJECTED, f"not chosen: {reason}"
        verdicts.append(AttemptVerdict(answer.attempt, p_of.get(answer.model), ex_ante_p.get(answer.model),
                                       decision, why))
    return Verdict(job.job_id, reason, accept=accepted.attempt, attempts=tuple(verdicts),
                   judge=judge_version if p_of else None)
