"""A SmolLM2 -> Gemma cascade with real llama.cpp models on real Postgres: real prompts with
references, graded answers, an answer judge fitted by the learner from those graded answers, the
scheduler's review, and the API's view of every attempt.

The models run in this process through the production BatchRunner and llama.cpp backend (what a
worker process runs for each Celery message), so the test controls when each tick, run and review
happens. The policy's cascade planning is built elsewhere: a test double adds the one-step cascade
``smollm2-135m -> gemma-3-270m`` with accept_at above 1, so the judge's verdict is to escalate
whatever p it gives (the p itself is real and shown). Runs in about a minute on two CPU cores.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from scheduler.api.app import create_app
from scheduler.fleet import Fleet, load_fleet
from scheduler.jobspec import JobSpec
from scheduler.learning.learner import Learner
from scheduler.loop import Scheduler, default_policy
from scheduler.plan import Escalation
from scheduler.settings import Settings
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.labels import LabelStore
from scheduler.storage.results import ResultStore
from scheduler.storage.tables import Job, JobAttempt
from scheduler.tick import Policy, TickReport, run_tick
from tests.conftest import bearer, create_api_key, make_settings
from tests.integration.tickkit import CascadingPolicy, register_workers
from workers.backends import make_backend
from workers.backends.base import Backend
from workers.runner import BatchRunner

pytestmark = pytest.mark.e2e

SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"
# Real questions with references; a few references are wrong on purpose so that the graded
# history holds both outcomes whatever these small models answer (the judge needs both).
HISTORY = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"), ("Who wrote Hamlet?", "Shakespeare"),
    ("What is 2 + 2?", "4"), ("What colour is the sky on a clear day?", "blue"),
    ("What is the largest planet in the solar system?", "Jupiter"), ("How many days are in a week?", "7"),
    ("What is the capital of Germany?", "Berlin"), ("What is the chemical symbol for water?", "H2O"),
    ("What is the capital of France?", "Canberra"), ("Who wrote Hamlet?", "Tolstoy"),
]
CASCADED = [("What is the capital of Spain?", "Madrid"), ("What is 3 + 5?", "8")]
FORCE_ESCALATION = 1.5


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Backend]]:
    settings = Settings()
    fleet = load_fleet(settings.fleet_file)
    loaded = {name: make_backend(fleet.get(name), settings) for name in (SMOL, GEMMA)}
    yield loaded
    for backend in loaded.values():
        backend.close()


def run_workers(db: Database, fleet: Fleet, backends: dict[str, Backend], report: TickReport) -> None:
    for dispatch in report.dispatches:
        spec = fleet.get(dispatch.model)
        BatchRunner(ResultStore(db), backends[spec.name], spec, f"{spec.name}@e2e:1", run_lease_s=300,
                    max_attempts=3, clock=utcnow).run(dispatch.dispatch_id, list(dispatch.job_ids))


def tick(db: Database, fleet: Fleet, settings: Settings, policy: Policy) -> TickReport:
    register_workers(db, fleet.names, utcnow())
    return run_tick(Scheduler(settings, db, fleet, policy, dispatcher=None).window_store, policy, fleet, None,
                    settings, utcnow())


def test_smollm2_then_gemma_on_real_prompts(pg_db: Database, backends: dict[str, Backend], tmp_path: Path) -> None:
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "predictors")
    fleet = load_fleet(settings.fleet_file)
    store = JobStore(pg_db)
    # Graded history: each question answered by both models (one job per model), graded where written.
    for question, reference in HISTORY:
        for model in (SMOL, GEMMA):
            store.submit_job("default", JobSpec(prompt=question, max_tokens=24, reference=reference,
                                                grader="contains", allowed_models=[model]), utcnow())
    report = tick(pg_db, fleet, settings, default_policy(fleet, settings))
    assert len(report.plan.assignments) == 2 * len(HISTORY)
    run_workers(pg_db, fleet, backends, report)
    history = LabelStore(pg_db).history()
    assert len(history) == 2 * len(HISTORY) and {label.score for label in history} >= {0.0, 1.0}
    learner = Learner(settings, pg_db, fleet)
    version = learner.refit_judge(utcnow())
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), dispatcher=None, learner=learner)

    policy = CascadingPolicy(default_policy(fleet, settings), SMOL, GEMMA, FORCE_ESCALATION)
    job_ids = [store.submit_job("default", JobSpec(prompt=q, max_tokens=24, reference=r, grader="contains"),
                                utcnow())[0].id for q, r in CASCADED]
    report = tick(pg_db, fleet, settings, policy)
    assert {(a.model, a.cascade) for a in report.plan.assignments} == {(SMOL, (Escalation(FORCE_ESCALATION, GEMMA),))}
    run_workers(pg_db, fleet, backends, report)
    assert scheduler.review_answers().escalated == len(job_ids)
    report = tick(pg_db, fleet, settings, policy)
    assert sorted(a.model for a in report.plan.assignments) == [GEMMA] * len(job_ids)
    run_workers(pg_db, fleet, backends, report)
    assert scheduler.review_answers().accepted == len(job_ids)

    with TestClient(create_app(settings, pg_db, fleet), headers=bearer(create_api_key(pg_db, "default"))) as api:
        shown = {job_id: api.get(f"/v1/jobs/{job_id}").json() for job_id in job_ids}
    with pg_db.session() as session:
        stored = {job_id: list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                                .order_by(JobAttempt.attempt))) for job_id in job_ids}
        jobs = {job_id: session.get(Job, job_id) for job_id in job_ids}
    for job_id in job_ids:
        body, job = shown[job_id], jobs[job_id]
        first, second = stored[job_id]
        for attempt in (first, second):   # shown with -s: what the models said and what the review made of it
            print(f"{attempt.model}: {attempt.answer!r} score={attempt.score} p_post={attempt.p_post:.2f} "
                  f"{attempt.decision}: {attempt.reason}")
        assert job is not None and job.status == JobStatus.SUCCEEDED
        assert (first.model, second.model) == (SMOL, GEMMA)
        assert first.answer and second.answer and first.output_tokens and second.output_tokens
        assert first.p_post is not None and second.p_post is not None and first.judge == version
        assert first.reason is not None and first.reason.startswith(f"escalate: post-hoc p={first.p_post:.2f} < 1.50")
        accepted = first if job.accepted_attempt == 1 else second
        assert accepted.p_post == max(first.p_post, second.p_post)
        assert job.result_text == accepted.answer and job.score == accepted.score
        assert job.cost_usd == pytest.approx((first.cost_usd or 0) + (second.cost_usd or 0))
        assert [a["model"] for a in body["attempt_history"]] == [SMOL, GEMMA]
        assert [a["answer"] for a in body["attempt_history"]] == [first.answer, second.answer]
        assert sum(a["accepted"] for a in body["attempt_history"]) == 1
        assert {a["decision"] for a in body["attempt_history"]} <= {"accepted", "escalated", "rejected"}
        assert {first.score, second.score} <= {0.0, 1.0}   # both answers graded against the reference
