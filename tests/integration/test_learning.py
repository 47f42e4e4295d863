"""Outcomes feed back: labelled history in Postgres -> fitted predictor version -> the tick routes
by what each model really did, and explores models it has seen too little of."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import update

from scheduler.datasets import Outcome, OutcomeRecord, Split
from scheduler.fleet import Fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.learning.learner import Learner
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.tables import Job, JobAttempt
from tests.conftest import make_settings
from tests.integration.tickkit import register_workers

SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"
COUNTRIES = ["France", "Spain", "Italy", "Peru", "Chile", "Japan", "Kenya", "Egypt", "Norway", "Canada",
             "Brazil", "India", "Ghana", "Chad", "Fiji", "Laos", "Oman", "Togo", "Cuba", "Iran"]


def labelled(db: Database, now: dt.datetime, prompt: str, model: str, score: float,
             promised: float | None = None) -> None:
    """A job answered once by ``model`` and labelled ``score`` (the job and its one attempt, as a
    worker and feedback write them)."""
    job, _ = JobStore(db).submit_job("t", JobSpec(prompt=prompt), now)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(
            status=JobStatus.SUCCEEDED, assigned_model=model, score=score, score_source="feedback",
            scored_at=now, output_tokens=8, result_text="x", predicted_quality=promised, attempts=1,
            accepted_attempt=1))
        session.add(JobAttempt(job_id=job.id, attempt=1, model=model, answer="x", output_tokens=8, score=score,
                               score_source="feedback", scored_at=now, created_at=now, decision="accepted"))


def seed_history(db: Database, now: dt.datetime) -> None:
    """Gemma knows capitals and SmolLM2 does not; for sums it is the other way round."""
    for i, country in enumerate(COUNTRIES):
        labelled(db, now, f"What is the capital of {country}?", GEMMA, 1.0)
        labelled(db, now, f"What is the capital city of {country}?", SMOL, 0.0)
        labelled(db, now, f"What is {i} plus {i + 3}?", SMOL, 1.0)
        labelled(db, now, f"Compute {i} plus {i + 7}.", GEMMA, 0.0)


def test_the_tick_routes_by_learned_outcomes(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "predictors", exploration_target_labels=0,
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


def test_exploration_sends_a_budgeted_share_to_the_least_tried_model(pg_db: Database, fleet: Fleet,
                                                                      tmp_path: Path) -> None:
    now = utcnow()
    for i in range(30):
        labelled(pg_db, now, f"q{i}", SMOL, 1.0)       # SmolLM2 has its 30 labels; Gemma has none
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", exploration_target_labels=30,
                             exploration_budget_fraction=0.5, plan_horizon_s=3600)  # capacity is not the limit here
    register_workers(pg_db, fleet.names, now)
    store = JobStore(pg_db)
    smol_only = set()
    for i in range(40):
        allowed = [SMOL] if i < 4 else None
        job = store.submit_job("t", JobSpec(prompt=f"new question {i}", allowed_models=allowed), now)[0]
        if allowed:
            smol_only.add(job.id)
    learner = Learner(settings, pg_db, fleet)
    report = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, learner).tick()

    explored = [a for a in report.plan.assignments if a.reason.startswith("exploring")]
    assert 8 <= len(explored) <= 32                    # about half the window (binomial draw)
    assert {a.model for a in explored} == {GEMMA}      # the model without labels
    assert not {a.job_id for a in explored} & smol_only  # a job that may not use Gemma never explores it
    assert f"exploring {len(explored)} jobs" in " ".join(report.plan.notes)


def test_imported_outcomes_count_as_labels_so_a_known_model_is_not_explored(pg_db: Database, fleet: Fleet,
                                                                             tmp_path: Path) -> None:
    now = utcnow()
    for i in range(30):
        labelled(pg_db, now, f"q{i}", SMOL, 1.0)       # SmolLM2: 30 feedback labels
    imported = [OutcomeRecord(f"imp{i}", f"imported question {i}", "t", Split.TRAIN,
                              {GEMMA: Outcome(float(i % 2), None, None)}) for i in range(40)]
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", predictor_kind="eccos-r",
                             exploration_target_labels=30, exploration_budget_fraction=0.5, plan_horizon_s=3600)
    learner = Learner(settings, pg_db, fleet)
    assert dict(zip(fleet.names, learner.feedback().label_counts, strict=True)) == {SMOL: 30, GEMMA: 0}
    learner.refit(now, imported)                        # Gemma: 40 outcomes from an imported dataset
    learner.predictor()                                 # the tick loads the new version
    counts = dict(zip(fleet.names, learner.feedback().label_counts, strict=True))
    assert counts == {SMOL: 30, GEMMA: 40}
    register_workers(pg_db, fleet.names, now)
    for i in range(20):
        JobStore(pg_db).submit_job("t", JobSpec(prompt=f"new question {i}"), now)
    report = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, learner).tick()
    assert not [a for a in report.plan.assignments if a.reason.startswith("exploring")]


def test_a_background_refit_keeps_learning_from_the_imported_outcomes(pg_db: Database, fleet: Fleet,
                                                                     tmp_path: Path) -> None:
    """``predictor fit --dataset`` keeps what it imported: the scheduler's later refits (its own
    process, no files given) fit on the imported outcomes and the new job history together."""
    now = utcnow()
    imported = [OutcomeRecord(f"imp{i}", f"imported question {i}", "t", Split.TRAIN,
                              {GEMMA: Outcome(float(i % 2), None, None)}) for i in range(40)]
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", predictor_kind="eccos-r")
    Learner(settings, pg_db, fleet).imported.replace(imported)       # what the command does
    for i in range(30):
        labelled(pg_db, now, f"q{i}", SMOL, 1.0)                      # then jobs run and are labelled

    scheduler_learner = Learner(settings, pg_db, fleet)               # the scheduler's, started afresh
    assert [r.id for r in scheduler_learner.imported.load()] == [r.id for r in imported]
    scheduler_learner.refit(now + dt.timedelta(minutes=10))          # as refit_in_background_if_due runs it
    assert scheduler_learner.predictor().fitted is not None
    assert scheduler_learner.predictor().fitted.label_counts == {SMOL: 30, GEMMA: 40}


def test_the_promise_check_adds_the_measured_gap_to_alpha(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    for i in range(40):   # promised 0.87, delivered 0.5 on average: a gap of 0.37
        labelled(pg_db, now, f"q{i}", SMOL, float(i % 2), promised=0.87)
    assert Learner(make_settings(pg_db.url, predictor_dir=tmp_path / "p"), pg_db, fleet).feedback().promise_gap == 0.0
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", exploration_target_labels=0,
                             promise_check_labels=500)   # off by default; on, alpha is held to outcomes
    learner = Learner(settings, pg_db, fleet)
    assert learner.feedback().promise_gap == pytest.approx(0.37)
    register_workers(pg_db, fleet.names, now)
    # alpha 0: SmolLM2 (prior 0.35, the cheaper model) would do; alpha 0 + 0.37 needs Gemma (prior 0.40)
    JobStore(pg_db).submit_batch("t", BatchSpec(name="b", alpha=0.0, jobs=[JobSpec(prompt="hi")]), now)
    report = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, learner).tick()
    assert "promise margin +0.370" in " ".join(report.plan.notes)
    [assignment] = report.plan.assignments
    assert assignment.model == GEMMA and "(+0.37 promise margin)" in assignment.reason


def test_pending_jobs_are_scored_between_ticks_once(pg_db: Database, fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", predictor_kind="eccos-r",
                             exploration_target_labels=0)
    seed_history(pg_db, now)
    learner = Learner(settings, pg_db, fleet)
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, learner)
    store = JobStore(pg_db)
    store.submit_job("t", JobSpec(prompt="What is the capital of Mali?"), now)
    assert scheduler.prescore() == 0                    # nothing fitted yet: priors need no scoring
    learner.refit(now)
    store.submit_job("t", JobSpec(messages=[{"role": "user", "content": "What is 40 plus 2?"}]), now)
    assert scheduler.prescore() == 2                    # both pending jobs, by the new version
    assert scheduler.prescore() == 0                    # already in the cache
    register_workers(pg_db, fleet.names, now)
    assert len(scheduler.tick().plan.assignments) == 2


def test_an_unreadable_version_falls_back_once_and_a_refit_replaces_it(
        pg_db: Database, fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A predictor file from an older format (or a damaged one) must not stop scheduling: the
    learner keeps what it has (here the fleet priors), says so once, and the next fit takes over."""
    now = utcnow()
    settings = make_settings(pg_db.url, predictor_dir=tmp_path / "p", predictor_kind="eccos-r",
                             exploration_target_labels=0)
    seed_history(pg_db, now)
    learner = Learner(settings, pg_db, fleet)
    learner.versions.directory.mkdir(parents=True)
    learner.versions.path("20000101T000000000000Z").write_bytes(b"written by another format")
    with caplog.at_level("WARNING", logger="scheduler.learning.learner"):
        for _ in range(3):                                   # three ticks
            assert learner.predictor().fitted is None
    assert sum("keeping the previous predictor" in r.getMessage() for r in caplog.records) == 1
    version = learner.refit(now)
    assert learner.predictor().version == version and learner.predictor().fitted is not None
