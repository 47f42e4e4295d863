"""Outcomes feed back: labelled history in Postgres -> fitted predictor version -> the tick routes
by what each model really did, and explores models it has seen too little of."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import update

from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec
from scheduler.learning.learner import Learner
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.tables import Job
from tests.conftest import make_settings
from tests.integration.tickkit import register_workers

SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"
COUNTRIES = ["France", "Spain", "Italy", "Peru", "Chile", "Japan", "Kenya", "Egypt", "Norway", "Canada",
             "Brazil", "India", "Ghana", "Chad", "Fiji", "Laos", "Oman", "Togo", "Cuba", "Iran"]


def labelled(db: Database, now: dt.datetime, prompt: str, model: str, score: float) -> None:
    job, _ = JobStore(db).submit_job("t", JobSpec(prompt=prompt), now)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(
            status=JobStatus.SUCCEEDED, assigned_model=model, score=score, score_source="feedback",
            scored_at=now, output_tokens=8, result_text="x"))


def seed_history(db: Database, now: dt.datetime) -> None:
    """Gemma knows capitals and SmolLM2 does not; for sums it is the other way round."""
    for i, country in enumerate(COUNTRIES):
        labelled(db, now, f"What is the capital of {country}?", GEMMA, 1.0)
        labelled(db, now, f"What is the capital city of {country}?", SMOL, 0.0)
        labelled(db, now, f"What is {i} plus {i + 3}?", SMOL, 1.0)
        labelled(db, now, f"Compute {i} plus {i + 7}.", GEMMA, 0.0)


def test_the_tick_routes_by_learned_outcomes(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "predictors", exploration_delta=0.0,
                             predictor_kind="eccos-r")
    seed_history(pg_db, now)
    learner = Learner(settings, pg_db, fleet)
    assert learner.predictor().fitted is None            # nothing fitted yet: fleet priors
    version = learner.refit(now)
    assert learner.versions.latest() == version

    register_workers(pg_db, fleet.names, now)
    store = JobStore(pg_db)
    capital = store.submit_job("t", JobSpec(prompt="What is the capital of Mali?", min_quality=0.6), now)[0]
    arithmetic = store.submit_job("t", JobSpec(prompt="What is 40 plus 2?", min_quality=0.6), now)[0]
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, learner)
    report = scheduler.tick()

    assert version in report.plan.policy
    placed = {a.job_id: a.model for a in report.plan.assignments}
    assert placed == {capital.id: GEMMA, arithmetic.id: SMOL}


def test_refit_waits_for_enough_new_labels(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", predictor_kind="eccos-r",
                             refit_min_new_labels=100, refit_min_interval_s=0)
    learner = Learner(settings, pg_db, fleet)
    seed_history(pg_db, now)                      # 80 labels: not enough
    assert not learner.refit_in_background_if_due(now)
    for i in range(20):
        labelled(pg_db, now, f"Name a colour number {i}.", GEMMA, 1.0)
    assert learner.refit_in_background_if_due(now)
    assert learner._fitting is not None
    learner._fitting.join(timeout=120)
    assert learner.versions.latest() is not None


def test_exploration_lifts_the_least_tried_model_for_a_share_of_jobs(pg_db: Database, fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    now = utcnow()
    for i in range(30):
        labelled(pg_db, now, f"q{i}", SMOL, 1.0)
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", exploration_delta=0.3,
                             exploration_budget_fraction=0.5)
    prediction = Learner(settings, pg_db, fleet).predictor().predict([f"new {i}" for i in range(400)])
    smol, gemma = fleet.models
    lifted = prediction.p_success[:, 1] > gemma.quality_prior
    assert 0.35 < lifted.mean() < 0.65                              # about the budgeted half
    assert (prediction.p_success[lifted, 1] - gemma.quality_prior).min() > \
        (prediction.p_success[lifted, 0] - smol.quality_prior).max()  # never-tried gemma gets the bigger bonus
