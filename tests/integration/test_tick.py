"""The tick on real Postgres + Redis + Celery publishing.

Claims only pending jobs; two ticks at once never dispatch a job twice; a crash between commit
and publish leaves jobs recoverable by their lease; a dry run writes nothing.
"""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select, update

from scheduler.dispatch import CeleryDispatcher
from scheduler.fleet import Fleet
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStatus, utcnow
from scheduler.storage.tables import Decision, Job
from scheduler.tick import TickReport
from tests.conftest import make_settings
from tests.integration.tickkit import published_job_ids, register_workers, submit
from scheduler.queues import make_celery


def make_scheduler(db: Database, fleet: Fleet, broker_url: str, **overrides: object) -> Scheduler:
    settings = make_settings(db.url, broker_url, **overrides)
    return Scheduler(settings, db, fleet, default_policy(fleet, settings), CeleryDispatcher(make_celery(settings)))


def statuses(db: Database) -> dict[str, JobStatus]:
    with db.session() as session:
        return dict(session.execute(select(Job.id, Job.status)).all())


def tick_at(scheduler: Scheduler, now: dt.datetime, dry_run: bool = False) -> TickReport:
    from scheduler.tick import run_tick

    return run_tick(scheduler.window_store, scheduler.policy, scheduler.fleet, scheduler.dispatcher,
                    scheduler.settings, now, dry_run=dry_run)


def test_tick_claims_only_pending_jobs(pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    pending = submit(pg_db, 3, now)
    cancelled, done = submit(pg_db, 2, now)
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == cancelled).values(status=JobStatus.CANCELLED))
        session.execute(update(Job).where(Job.id == done).values(status=JobStatus.SUCCEEDED))

    report = make_scheduler(pg_db, fleet, redis_url).tick()

    assert {a.job_id for a in report.plan.assignments} == set(pending)
    assert report.publish is not None and report.publish.published >= 1 and not report.publish.failed
    published = [job for jobs in published_job_ids(redis_url, fleet).values() for job in jobs]
    assert sorted(published) == sorted(pending)
    now_status = statuses(pg_db)
    assert {now_status[j] for j in pending} == {JobStatus.QUEUED}
    assert (now_status[cancelled], now_status[done]) == (JobStatus.CANCELLED, JobStatus.SUCCEEDED)
    with pg_db.session() as session:
        queued = list(session.scalars(select(Job).where(Job.id.in_(pending))))
        assert all(j.assigned_model and j.assignment_reason and j.dispatch_id and j.lease_expires_at for j in queued)
        assert session.scalar(select(func.count()).select_from(Decision)) == 3

    assert make_scheduler(pg_db, fleet, redis_url).tick().plan.assignments == ()  # nothing left


def test_two_ticks_at_once_never_dispatch_a_job_twice(pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    jobs = submit(pg_db, 120, now)
    # A long horizon: the fleet cap (64 per model), not measured speed, bounds this window.
    schedulers = [make_scheduler(pg_db, fleet, redis_url, plan_horizon_s=3600) for _ in range(2)]
    start = threading.Barrier(2)
    reports: list[TickReport] = []

    def tick(scheduler: Scheduler) -> None:
        start.wait()
        reports.append(scheduler.tick())

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    planned = [a.job_id for report in reports for a in report.plan.assignments]
    published = [job for ids in published_job_ids(redis_url, fleet).values() for job in ids]
    assert len(planned) == len(set(planned)) == 120
    assert sorted(published) == sorted(jobs)
    assert set(statuses(pg_db).values()) == {JobStatus.QUEUED}


def test_crash_between_commit_and_publish_is_recovered_by_the_lease(pg_db: Database, fleet: Fleet,
                                                                    redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    jobs = submit(pg_db, 5, now)
    # The broker is unreachable: the plan commits, publishing fails, the jobs are queued in Postgres only.
    broken = make_scheduler(pg_db, fleet, "redis://127.0.0.1:1/0", queue_lease_s=60)
    report = tick_at(broken, now)
    assert report.publish is not None and report.publish.published == 0 and report.publish.failed
    assert set(statuses(pg_db).values()) == {JobStatus.QUEUED}
    assert published_job_ids(redis_url, fleet) == {}

    healthy = make_scheduler(pg_db, fleet, redis_url, queue_lease_s=60)
    early = tick_at(healthy, now + dt.timedelta(seconds=30))
    assert early.recovery.requeued == 0 and early.plan.assignments == ()  # lease still running

    later = now + dt.timedelta(seconds=61)
    register_workers(pg_db, fleet.names, later)
    recovered = tick_at(healthy, later)
    assert recovered.recovery.requeued == 5
    assert sorted(a.job_id for a in recovered.plan.assignments) == sorted(jobs)
    assert sorted(j for ids in published_job_ids(redis_url, fleet).values() for j in ids) == sorted(jobs)


def test_dry_run_writes_nothing(pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    submit(pg_db, 4, now)
    with pg_db.session() as session:
        before = [tuple(row) for row in session.execute(select(Job.id, Job.status, Job.updated_at)).all()]

    report = make_scheduler(pg_db, fleet, redis_url).tick(dry_run=True)

    assert len(report.plan.assignments) == 4 and report.publish is None
    with pg_db.session() as session:
        after = [tuple(row) for row in session.execute(select(Job.id, Job.status, Job.updated_at)).all()]
        assert session.scalar(select(func.count()).select_from(Decision)) == 0
    assert sorted(after) == sorted(before)
    assert published_job_ids(redis_url, fleet) == {}


def test_a_model_without_live_workers_gets_nothing(pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, ["gemma-3-270m"], now)
    only_smol = submit(pg_db, 2, now, allowed_models=["smollm2-135m"])
    anywhere = submit(pg_db, 2, now)

    report = make_scheduler(pg_db, fleet, redis_url).tick()

    assert {a.job_id: a.model for a in report.plan.assignments} == {j: "gemma-3-270m" for j in anywhere}
    deferred = {d.job_id: d.reason for d in report.plan.deferrals}
    assert set(deferred) == set(only_smol)
    assert all("no live worker" in reason for reason in deferred.values())
    assert {statuses(pg_db)[j] for j in only_smol} == {JobStatus.PENDING}


@pytest.mark.parametrize("dry_run", [False, True])
def test_tick_on_an_empty_window(pg_db: Database, fleet: Fleet, redis_url: str, dry_run: bool) -> None:
    report = make_scheduler(pg_db, fleet, redis_url).tick(dry_run=dry_run)
    assert report.plan.assignments == () and report.plan.deferrals == ()
