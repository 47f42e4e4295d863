"""A backlog far larger than the free capacity, on real Postgres: the tick plans a window sized to
what the fleet can take, most urgent first; waiting jobs keep a reason that is written once; jobs
no model can ever serve fail at once; jobs waiting past max_pending expire; history is pruned."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from scheduler.fleet import Fleet, load_fleet
from scheduler.jobspec import JobSpec
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.tables import Decision, Job, Tick
from scheduler.tick import TickReport, run_tick
from tests.conftest import make_settings
from tests.integration.test_production_scheduling import FAST, FLEET, SLOW, beat

LATENCY_S = 10.0   # each model's measured seconds per job: a 30 s horizon gives it 3 slots


@pytest.fixture
def fleet2(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def tick(db: Database, fleet: Fleet, now: dt.datetime, **overrides: object) -> TickReport:
    settings = make_settings(db.url, **({"plan_horizon_s": 30.0, "window_headroom": 2.0, "window_min_jobs": 4}
                                        | overrides))
    scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None)
    return run_tick(scheduler.window_store, scheduler.policy, fleet, None, settings, now)


def backlog(db: Database, now: dt.datetime, count: int, age: dt.timedelta = dt.timedelta(0),
            **fields: object) -> list[str]:
    created = now - age
    return [JobStore(db).submit_job("t", JobSpec(prompt=f"job {i}", max_tokens=64, **fields),
                                    created + dt.timedelta(microseconds=i))[0].id for i in range(count)]


def workers(db: Database, now: dt.datetime) -> None:
    beat(db, SLOW, now, latency_s=LATENCY_S)
    beat(db, FAST, now, latency_s=LATENCY_S)


def finish_queued(db: Database) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.status == JobStatus.QUEUED).values(status=JobStatus.SUCCEEDED))


def count(db: Database, what: object, *where: object) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(what).where(*where)) or 0)  # type: ignore[arg-type]


def test_the_window_follows_free_capacity_not_the_backlog(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    backlog(pg_db, now, 500)
    report = tick(pg_db, fleet2, now)
    # 3 free slots per model, 2 models, headroom 2: a 12-job window out of 500.
    assert report.window_jobs == 12
    assert len(report.plan.assignments) == 6
    assert count(pg_db, Job, Job.status == JobStatus.PENDING) == 494


def test_near_deadlines_come_first_then_the_oldest(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    oldest = backlog(pg_db, now, 3, age=dt.timedelta(hours=3))
    backlog(pg_db, now, 200, age=dt.timedelta(hours=1))
    soon = backlog(pg_db, now, 2, deadline=now + dt.timedelta(minutes=5))
    later = backlog(pg_db, now, 2, deadline=now + dt.timedelta(hours=5))   # not urgent yet: by age
    report = tick(pg_db, fleet2, now)
    placed = {a.job_id for a in report.plan.assignments}
    assert set(soon) <= placed            # the near deadlines win over jobs that waited hours
    assert set(oldest) <= placed          # then the oldest
    assert not placed & set(later)


def test_a_deferred_job_is_never_starved_by_newer_arrivals(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    first = backlog(pg_db, now, 30)
    for step in range(1, 8):
        later = now + dt.timedelta(minutes=step)
        workers(pg_db, later)
        backlog(pg_db, later, 30)            # more arrive than can run, every tick
        tick(pg_db, fleet2, later)
        finish_queued(pg_db)
    # 6 slots a tick for 7 ticks: the 30 first arrivals all ran before any later one pushed in.
    with pg_db.session() as session:
        states = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(first))).all())
    assert set(states.values()) == {JobStatus.SUCCEEDED}


def test_a_waiting_job_keeps_its_reason_written_once(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    jobs = backlog(pg_db, now, 30)
    settings = {"window_headroom": 10.0}
    first = tick(pg_db, fleet2, now, **settings)
    deferred = [d.job_id for d in first.plan.deferrals]
    assert len(deferred) == 24
    with pg_db.session() as session:
        reasons = set(session.scalars(select(Job.assignment_reason).where(Job.id.in_(deferred))))
    assert reasons == {first.plan.deferrals[0].reason} and "waiting" in first.plan.deferrals[0].reason
    decisions_after_first = count(pg_db, Decision)
    assert decisions_after_first == 30     # 6 assigned + 24 deferred

    # The same jobs wait through more ticks (the fleet is still busy): nothing new is written.
    for _ in range(3):
        again = tick(pg_db, fleet2, now, **settings)
        assert again.plan.assignments == ()
    assert count(pg_db, Decision) == decisions_after_first
    assert count(pg_db, Tick) == 1          # a tick that changed nothing leaves no tick row
    assert len(jobs) == 30


def test_a_job_no_model_can_ever_serve_fails_at_once(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    [hopeless] = backlog(pg_db, now, 1, max_cost_usd=1e-9)
    [fine] = backlog(pg_db, now, 1)
    report = tick(pg_db, fleet2, now)
    assert [a.job_id for a in report.plan.assignments] == [fine]
    with pg_db.session() as session:
        job = session.get(Job, hopeless)
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error is not None and "no model can ever serve" in job.error and "max_cost_usd" in job.error


def test_a_job_pending_past_max_pending_expires_with_its_last_reason(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, FAST, now, latency_s=LATENCY_S)
    [waiting] = backlog(pg_db, now, 1, allowed_models=[SLOW])   # SLOW has no live worker
    tick(pg_db, fleet2, now)
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == waiting).values(expires_at=now + dt.timedelta(hours=1)))
    tick(pg_db, fleet2, now + dt.timedelta(minutes=59))
    later = now + dt.timedelta(hours=1, seconds=1)
    report = tick(pg_db, fleet2, later)
    assert report.recovery.expired == 1
    with pg_db.session() as session:
        job = session.get(Job, waiting)
        assert job is not None and job.status is JobStatus.EXPIRED
        assert job.error is not None and "max_pending" in job.error and "no live worker" in job.error


def test_history_older_than_the_retention_is_pruned(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    backlog(pg_db, now, 10)
    tick(pg_db, fleet2, now - dt.timedelta(days=8))
    old_rows = count(pg_db, Decision)
    backlog(pg_db, now, 4)
    finish_queued(pg_db)
    tick(pg_db, fleet2, now)
    assert count(pg_db, Decision) > old_rows
    settings = make_settings(pg_db.url)
    scheduler = Scheduler(settings, pg_db, fleet2, default_policy(fleet2, settings), dispatcher=None)
    pruned = scheduler.window_store.prune_history(now - dt.timedelta(seconds=settings.decision_retention_s), 5)
    assert pruned == 5 + 1                   # bounded per call: 5 decisions and the one old tick
    scheduler.window_store.prune_history(now - dt.timedelta(seconds=settings.decision_retention_s), 10_000)
    assert count(pg_db, Decision, Decision.created_at < now - dt.timedelta(days=7)) == 0
    assert count(pg_db, Decision) > 0        # today's stay


def test_jobs_of_a_lost_dispatch_are_planned_again_at_once(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    backlog(pg_db, now, 4)
    report = tick(pg_db, fleet2, now)
    dispatch_ids = {d.dispatch_id for d in report.dispatches}
    settings = make_settings(pg_db.url)
    store = Scheduler(settings, pg_db, fleet2, default_policy(fleet2, settings), dispatcher=None).window_store
    queued = store.queued_dispatches(now)
    assert set().union(*queued.values()) == dispatch_ids
    lost = sorted(dispatch_ids)[0]
    assert store.replan_lost_dispatches({lost}, now) >= 1
    with pg_db.session() as session:
        replanned = session.execute(select(Job.status, Job.attempts, Job.error).where(Job.dispatch_id.is_(None))).all()
    assert replanned and all(s is JobStatus.PENDING and a == 0 and "lost" in (e or "") for s, a, e in replanned)
