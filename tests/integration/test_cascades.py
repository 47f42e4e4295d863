"""Cascades in production on real Postgres: the tick, the real worker runner (echo backend), the
scheduler's review with a real answer judge fitted from labelled job history, and the API.

The policy's cascade *planning* is built elsewhere; here a test double of the policy adds a one-step
cascade (small -> big) to the production policy's plan, with ``accept_at`` chosen so the judge's
verdict is deterministic: above 1 forces the escalation, 0 forces the accept.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from scheduler.api.app import create_app
from scheduler.fleet import Fleet, load_fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.learning.learner import Learner
from scheduler.loop import Scheduler, default_policy
from scheduler.plan import Escalation
from scheduler.settings import Settings
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.labels import LabelStore
from scheduler.storage.results import ResultStore
from scheduler.storage.tables import Job, JobAttempt
from scheduler.storage.window import committed_spend
from scheduler.tick import Policy, TickReport, run_tick
from tests.conftest import bearer, create_api_key, make_settings
from tests.integration import tickkit
from tests.integration.tickkit import register_workers
from workers.backends.base import GenerationRequest, GenerationResult
from workers.backends.echo import EchoBackend
from workers.runner import BatchRunner

SMALL, BIG = "small", "big"
FLEET = f'''
[[models]]
name = "{SMALL}"
backend = "echo"
weights = "none"
usd_per_mtok_input = 10.0
usd_per_mtok_output = 10.0
quality_prior = 0.5

[[models]]
name = "{BIG}"
backend = "echo"
weights = "none"
usd_per_mtok_input = 20.0
usd_per_mtok_output = 20.0
quality_prior = 0.8
'''
FORCE_ESCALATION, FORCE_ACCEPT = 1.5, 0.0


def CascadingPolicy(inner: Policy, accept_at: float) -> tickkit.CascadingPolicy:  # noqa: N802 - reads as the class
    return tickkit.CascadingPolicy(inner, SMALL, BIG, accept_at)


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


@pytest.fixture
def settings(pg_db: Database, tmp_path: Path) -> Settings:
    return make_settings(pg_db.url, predictor_dir=tmp_path / "predictors")


@pytest.fixture
def learner(settings: Settings, pg_db: Database, fleet: Fleet) -> Learner:
    return Learner(settings, pg_db, fleet)


@pytest.fixture
def api(pg_db: Database, fleet: Fleet, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, pg_db, fleet), headers=bearer(create_api_key(pg_db, "default"))) as client:
        yield client


def tick(db: Database, fleet: Fleet, settings: Settings, policy: Policy) -> TickReport:
    register_workers(db, fleet.names, utcnow())
    return run_tick(Scheduler(settings, db, fleet, policy, dispatcher=None).window_store, policy, fleet, None,
                    settings, utcnow())


def run_workers(db: Database, fleet: Fleet, report: TickReport) -> None:
    """What each model's worker does with the messages the tick published: the real runner."""
    for dispatch in report.dispatches:
        spec = fleet.get(dispatch.model)
        BatchRunner(ResultStore(db), EchoBackend(spec), spec, f"{spec.name}@test:1", run_lease_s=60,
                    max_attempts=3, clock=utcnow).run(dispatch.dispatch_id, list(dispatch.job_ids))


def submit(db: Database, prompt: str, **fields: object) -> str:
    return JobStore(db).submit_job("default", JobSpec(prompt=prompt, max_tokens=16, **fields), utcnow())[0].id


def job_row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def attempts(db: Database, job_id: str) -> list[JobAttempt]:
    with db.session() as session:
        return list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                    .order_by(JobAttempt.attempt)))


def fit_judge(db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> str:
    """Labelled history through the real path (graded answers of both models), then the learner's
    real fit of the answer judge on it."""
    for i in range(24):
        model = SMALL if i % 3 else BIG
        # echo answers with the prompt: the grade against the reference is 1 for half of them
        submit(db, f"history {i}: the capital of France is Paris", reference="Paris" if i % 2 else "Rome",
               grader="contains", allowed_models=[model])
    run_workers(db, fleet, tick(db, fleet, settings, default_policy(fleet, settings)))
    assert len(LabelStore(db).history()) == 24
    return learner.refit_judge(utcnow())


def test_a_weak_first_answer_escalates_and_the_best_answer_is_accepted(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner, api: TestClient) -> None:
    version = fit_judge(pg_db, fleet, settings, learner)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    policy = CascadingPolicy(default_policy(fleet, settings), FORCE_ESCALATION)
    job_id = submit(pg_db, "what is the capital of France? Paris", reference="Paris")

    report = tick(pg_db, fleet, settings, policy)
    [assignment] = report.plan.assignments
    assert (assignment.model, assignment.cascade) == (SMALL, (Escalation(FORCE_ESCALATION, BIG),))
    assert job_row(pg_db, job_id).cascade == [{"accept_at": FORCE_ESCALATION, "next_model": BIG}]
    run_workers(pg_db, fleet, report)

    # The small model's answer waits for the review; it is kept, not yet the job's result.
    job = job_row(pg_db, job_id)
    [first] = attempts(pg_db, job_id)
    assert (job.status, job.result_text, job.accepted_attempt) == (JobStatus.REVIEWING, None, None)
    assert (first.model, first.answer, first.decision) == (SMALL, "what is the capital of France? Paris", None)
    assert first.cost_usd and first.cost_usd > 0 and job.cost_usd == pytest.approx(first.cost_usd)
    assert first.score == 1.0   # graded against the reference where it was written

    counts = scheduler.review_answers()
    assert (counts.accepted, counts.escalated) == (0, 1)
    job = job_row(pg_db, job_id)
    [first] = attempts(pg_db, job_id)
    assert (job.status, job.escalate_to, job.cascade, job.attempts_before_step) == (JobStatus.PENDING, BIG, None, 1)
    assert first.decision == "escalated" and first.judge == version and first.p_post is not None
    assert first.reason == job.assignment_reason == f"escalate: post-hoc p={first.p_post:.2f} < 1.50; next {BIG}"

    # The next tick sends it to big, and only big (small is cheaper and free).
    report = tick(pg_db, fleet, settings, policy)
    [assignment] = report.plan.assignments
    assert (assignment.model, assignment.cascade) == (BIG, ())
    assert assignment.reason.startswith(f"escalation: the answer of {SMALL} was judged too weak, so its cascade "
                                        f"runs {BIG}: {BIG} p=")
    run_workers(pg_db, fleet, report)
    assert job_row(pg_db, job_id).status == JobStatus.REVIEWING   # its answers compete: judged again

    counts = scheduler.review_answers()
    assert (counts.accepted, counts.escalated) == (1, 0)
    job = job_row(pg_db, job_id)
    first, second = attempts(pg_db, job_id)
    assert second.model == BIG and second.p_post is not None
    best = second if second.p_post >= first.p_post else first   # a tie goes to the later answer
    assert (job.status, job.accepted_attempt, job.assigned_model) == (JobStatus.SUCCEEDED, best.attempt, best.model)
    assert job.result_text == best.answer and job.score == best.score == 1.0
    assert job.cost_usd == pytest.approx(first.cost_usd + second.cost_usd)
    assert job.escalate_to is None and job.cascade is None
    assert best.decision == "accepted" and "accept: best of 2 answers" in (best.reason or "")
    if best is second:
        assert first.decision == "escalated"
    else:
        assert second.decision == "rejected" and (second.reason or "").startswith("not chosen: accept: best of 2")
        assert "accepted after all" in (first.reason or "")

    # GET /v1/jobs/{id}: every attempt with its answer, tokens, cost, decision and reason.
    body = api.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "succeeded" and body["accepted_attempt"] == best.attempt
    assert body["cost_usd"] == pytest.approx(first.cost_usd + second.cost_usd)
    history = body["attempt_history"]
    assert [(a["attempt"], a["model"]) for a in history] == [(1, SMALL), (2, BIG)]
    for shown, stored in zip(history, (first, second), strict=True):
        assert shown["answer"] == stored.answer and shown["output_tokens"] == stored.output_tokens > 0
        assert shown["input_tokens"] == stored.input_tokens and shown["cost_usd"] == pytest.approx(stored.cost_usd)
        assert shown["decision"] == stored.decision and shown["reason"] == stored.reason
        assert shown["accepted"] is (stored.attempt == best.attempt)
    # Both answers are labels now: the judge and the ex-ante predictor learn from each model's.
    labels = [label for label in LabelStore(pg_db).history() if label.job_id == job_id]
    assert sorted(label.model for label in labels) == [BIG, SMALL]


def test_a_judged_answer_above_accept_at_is_accepted_at_once(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> None:
    fit_judge(pg_db, fleet, settings, learner)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    job_id = submit(pg_db, "name a colour: blue")
    run_workers(pg_db, fleet, tick(pg_db, fleet, settings, CascadingPolicy(default_policy(fleet, settings),
                                                                          FORCE_ACCEPT)))
    assert scheduler.review_answers().accepted == 1
    job = job_row(pg_db, job_id)
    [only] = attempts(pg_db, job_id)
    assert (job.status, job.result_text, job.accepted_attempt) == (JobStatus.SUCCEEDED, only.answer, 1)
    assert only.decision == "accepted" and only.reason == f"accept: post-hoc p={only.p_post:.2f} >= 0.00 ({SMALL})"
    assert job.cost_usd == pytest.approx(only.cost_usd)


def test_without_a_fitted_judge_the_first_answer_is_accepted_and_says_so(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> None:
    assert learner.judge() == (None, None)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    job_id = submit(pg_db, "name a colour: blue")
    run_workers(pg_db, fleet, tick(pg_db, fleet, settings, CascadingPolicy(default_policy(fleet, settings),
                                                                          FORCE_ESCALATION)))
    assert job_row(pg_db, job_id).status == JobStatus.REVIEWING
    assert scheduler.review_answers().accepted == 1
    job = job_row(pg_db, job_id)
    [only] = attempts(pg_db, job_id)
    assert (job.status, job.assigned_model, job.result_text) == (JobStatus.SUCCEEDED, SMALL, "name a colour: blue")
    assert only.decision == "accepted" and only.p_post is None
    assert only.reason == job.assignment_reason == (
        f"accept: no answer judge is fitted yet, so nothing escalates; planned next: {BIG} below p=1.50")


def test_cascade_false_on_a_job_or_its_batch_never_escalates(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> None:
    fit_judge(pg_db, fleet, settings, learner)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    own = submit(pg_db, "one model only, please", cascade=False)
    _batch, in_batch, _ = JobStore(pg_db).submit_batch(
        "default", BatchSpec(cascade=False, jobs=[JobSpec(prompt="a batch that said no", max_tokens=16),
                                                  JobSpec(prompt="but this job said yes", max_tokens=16,
                                                          cascade=True)]), utcnow())
    report = tick(pg_db, fleet, settings, CascadingPolicy(default_policy(fleet, settings), FORCE_ESCALATION))
    assert {a.job_id for a in report.plan.assignments} == {own, *in_batch}
    assert [job_row(pg_db, j).cascade for j in (own, *in_batch)] == [None, None,
                                                                     [{"accept_at": 1.5, "next_model": BIG}]]
    run_workers(pg_db, fleet, report)
    for job_id in (own, in_batch[0]):   # one model, its answer accepted as it is: no review at all
        job = job_row(pg_db, job_id)
        [only] = attempts(pg_db, job_id)
        assert (job.status, job.cascade_allowed, job.accepted_attempt) == (JobStatus.SUCCEEDED, False, 1)
        assert (only.decision, only.reason) == ("accepted", "accepted: no cascade step planned")
    assert job_row(pg_db, in_batch[1]).status == JobStatus.REVIEWING   # a job's own cascade wins over its batch's
    assert scheduler.review_answers().escalated == 1


def test_a_batch_spend_cap_counts_every_attempt(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> None:
    fit_judge(pg_db, fleet, settings, learner)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    policy = CascadingPolicy(default_policy(fleet, settings), FORCE_ESCALATION)
    batch, [job_id], _ = JobStore(pg_db).submit_batch(
        "default", BatchSpec(max_cost_usd=1.0, jobs=[JobSpec(prompt="what is two plus two? four", max_tokens=16)]),
        utcnow())

    def spent() -> float:
        with pg_db.session() as session:
            return committed_spend(session, Job.batch_id, {batch.id}).get(batch.id, 0.0)

    run_workers(pg_db, fleet, tick(pg_db, fleet, settings, policy))
    [first] = attempts(pg_db, job_id)
    assert spent() == pytest.approx(first.cost_usd)   # answered, under review: its first attempt is spent
    assert scheduler.review_answers().escalated == 1
    assert spent() == pytest.approx(first.cost_usd)
    # What big is predicted to cost (a dry run writes nothing): the cap is set so that big alone
    # would fit, but not beside what the small model already spent.
    dry = run_tick(scheduler.window_store, policy, fleet, None, settings, utcnow(), dry_run=True)
    [planned] = dry.plan.assignments
    with pg_db.session() as session:
        from scheduler.storage.tables import Batch
        session.get(Batch, batch.id).max_cost_usd = planned.predicted_cost_usd + first.cost_usd / 2   # type: ignore[union-attr]
    report = tick(pg_db, fleet, settings, policy)
    assert report.plan.assignments == ()
    [waiting] = report.plan.deferrals
    assert waiting.reason.startswith(f"waiting: its escalation must run on {BIG}, and max_cost_usd or what is left "
                                     "of its batch's")
    with pg_db.session() as session:
        session.get(Batch, batch.id).max_cost_usd = 1.0   # type: ignore[union-attr]
    report = tick(pg_db, fleet, settings, policy)
    [queued] = report.plan.assignments
    assert spent() == pytest.approx(first.cost_usd + queued.predicted_cost_usd)   # queued: its prediction reserved
    run_workers(pg_db, fleet, report)
    assert scheduler.review_answers().accepted == 1
    first, second = attempts(pg_db, job_id)
    assert spent() == pytest.approx(first.cost_usd + second.cost_usd) == pytest.approx(job_row(pg_db, job_id).cost_usd)


class BrokenEcho(EchoBackend):
    """The echo double with an engine that fails every request (a model that hangs or crashes)."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        raise RuntimeError("engine crashed")


def test_an_escalation_that_cannot_run_accepts_the_earlier_answer(
        pg_db: Database, fleet: Fleet, settings: Settings, learner: Learner) -> None:
    fit_judge(pg_db, fleet, settings, learner)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)
    policy = CascadingPolicy(default_policy(fleet, settings), FORCE_ESCALATION)
    job_id = submit(pg_db, "name a colour: blue")
    run_workers(pg_db, fleet, tick(pg_db, fleet, settings, policy))
    assert scheduler.review_answers().escalated == 1
    [dispatch] = tick(pg_db, fleet, settings, policy).dispatches
    spec = fleet.get(BIG)
    # big fails on its last allowed run (max_attempts counts the runs of this step only)
    BatchRunner(ResultStore(pg_db), BrokenEcho(spec), spec, "big@test:1", run_lease_s=60, max_attempts=1,
                clock=utcnow).run(dispatch.dispatch_id, list(dispatch.job_ids))
    job = job_row(pg_db, job_id)
    assert (job.status, job.cascade) == (JobStatus.REVIEWING, None)
    assert scheduler.review_answers().accepted == 1
    job = job_row(pg_db, job_id)
    first, failed = attempts(pg_db, job_id)
    assert (job.status, job.accepted_attempt, job.result_text) == (JobStatus.SUCCEEDED, 1, "name a colour: blue")
    assert (failed.model, failed.answer, failed.decision) == (BIG, None, "failed")
    assert (failed.reason or "").startswith("failed (RuntimeError: engine crashed); the best earlier answer")
    assert first.decision == "accepted" and "accepted after all" in (first.reason or "")
    assert job.cost_usd == pytest.approx(first.cost_usd)
