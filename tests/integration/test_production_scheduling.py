"""The tick against the live fleet on real Postgres: measured capacity, deadlines, budgets, starvation."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from scheduler.fleet import Fleet, load_fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.loop import Scheduler, default_policy
from scheduler.plan import Ending
from scheduler.storage import Beat, Database, HeartbeatStore, JobStatus, JobStore, utcnow
from scheduler.storage.tables import Job
from scheduler.tick import TickReport, run_tick
from tests.conftest import make_settings

SLOW, FAST = "slow-cheap", "fast-pricey"
FLEET = f'''
[[models]]
name = "{SLOW}"
backend = "llama_cpp"
weights = "path:/models/slow.gguf"
usd_per_second = 0.001
tokens_per_second_prior = 10.0
capacity_jobs = 100

[[models]]
name = "{FAST}"
backend = "llama_cpp"
weights = "path:/models/fast.gguf"
usd_per_second = 0.1
tokens_per_second_prior = 200.0
capacity_jobs = 100
'''


@pytest.fixture
def fleet2(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def beat(db: Database, model: str, now: dt.datetime, *, latency_s: float | None = None,
         tokens_per_s: float | None = None, worker: str = "1") -> None:
    HeartbeatStore(db).beat(Beat(worker_id=f"{model}@h:{worker}", model=model, host="h", pid=int(worker),
                                 concurrency=1, jobs_done=10 if latency_s or tokens_per_s else 0,
                                 tokens_per_s=tokens_per_s, mean_latency_s=latency_s, started_at=now), now)


def tick(db: Database, fleet: Fleet, now: dt.datetime, **overrides: object) -> TickReport:
    settings = make_settings(db.url, **overrides)
    scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None)
    return run_tick(scheduler.window_store, scheduler.policy, fleet, None, settings, now)


def submit(db: Database, now: dt.datetime, count: int, **fields: object) -> list[str]:
    return [JobStore(db).submit_job("t", JobSpec(prompt=f"job {i}", max_tokens=64, **fields), now)[0].id
            for i in range(count)]


def test_capacity_follows_what_workers_report(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now, latency_s=10.0)     # 30 s horizon / 10 s per job = 3 jobs
    jobs = submit(pg_db, now, 10, allowed_models=[SLOW])
    report = tick(pg_db, fleet2, now, plan_horizon_s=30)
    assert len(report.plan.assignments) == 3
    assert all("capacity" in d.reason for d in report.plan.deferrals) and len(report.plan.deferrals) == 7
    # Backlog counts against capacity: the next tick adds nothing until those finish.
    assert tick(pg_db, fleet2, now, plan_horizon_s=30).plan.assignments == ()
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.status == JobStatus.QUEUED).values(status=JobStatus.SUCCEEDED))
    assert len(tick(pg_db, fleet2, now, plan_horizon_s=30).plan.assignments) == 3
    assert len(jobs) == 10


def test_a_model_with_no_live_worker_gets_nothing(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now - dt.timedelta(minutes=5))  # stale: its worker is gone
    beat(pg_db, FAST, now)
    submit(pg_db, now, 4)
    report = tick(pg_db, fleet2, now)
    assert {a.model for a in report.plan.assignments} == {FAST}


def test_a_deadline_only_one_model_can_meet_sends_the_job_there(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now, tokens_per_s=10.0)
    beat(pg_db, FAST, now, tokens_per_s=200.0)
    relaxed = submit(pg_db, now, 1)
    urgent = submit(pg_db, now, 1, deadline=now + dt.timedelta(seconds=3))  # slow needs 6.4 s
    report = tick(pg_db, fleet2, now)
    placed = {a.job_id: a.model for a in report.plan.assignments}
    assert placed == {relaxed[0]: SLOW, urgent[0]: FAST}


def test_a_deadline_no_model_can_meet_runs_late_flagged_or_expires(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now, tokens_per_s=10.0)
    beat(pg_db, FAST, now, tokens_per_s=200.0)
    deadline = now + dt.timedelta(seconds=0.1)
    late = submit(pg_db, now, 1, deadline=deadline)
    expire = submit(pg_db, now, 1, deadline=deadline, on_deadline_miss="expire")
    report = tick(pg_db, fleet2, now)
    [assignment] = report.plan.assignments
    assert assignment.job_id == late[0] and assignment.model == FAST and "WILL MISS DEADLINE" in assignment.reason
    [expiry] = report.plan.deferrals
    assert expiry.job_id == expire[0] and expiry.ending is Ending.EXPIRED
    with pg_db.session() as session:
        assert session.get(Job, expire[0]).status is JobStatus.EXPIRED  # type: ignore[union-attr]


def test_a_batch_budget_is_never_exceeded(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now, tokens_per_s=10.0)
    per_job = 64 / 10.0 * 0.001 + 1 / 8 / 10 * 0.001   # predicted: output + prompt reading, on SLOW
    cap = 3.5 * per_job
    batch, _, _ = JobStore(pg_db).submit_batch("t", BatchSpec(max_cost_usd=cap, jobs=[
        JobSpec(prompt=f"j{i}", max_tokens=64) for i in range(10)]), now)

    first = tick(pg_db, fleet2, now)
    assert len(first.plan.assignments) == 3
    assert sum(a.predicted_cost_usd for a in first.plan.assignments) <= cap
    assert any("budget" in d.reason for d in first.plan.deferrals)

    # The three finish for less than predicted: the real cost settles and frees budget.
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.status == JobStatus.QUEUED).values(
            status=JobStatus.SUCCEEDED, cost_usd=per_job / 4))
    second = tick(pg_db, fleet2, now)
    assert len(second.plan.assignments) == 2
    with pg_db.session() as session:
        spent = session.scalar(select(func.sum(Job.cost_usd)).where(Job.batch_id == batch.id)) or 0.0
        reserved = session.scalar(select(func.sum(Job.predicted_cost_usd)).where(
            Job.batch_id == batch.id, Job.status == JobStatus.QUEUED)) or 0.0
    assert spent + reserved <= cap


def test_the_oldest_job_wins_scarce_capacity(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    beat(pg_db, SLOW, now, latency_s=60.0)  # capacity: one job
    old = submit(pg_db, now - dt.timedelta(minutes=10), 1, allowed_models=[SLOW])
    submit(pg_db, now, 3, allowed_models=[SLOW])
    report = tick(pg_db, fleet2, now, plan_horizon_s=30)
    assert [a.job_id for a in report.plan.assignments] == old
