"""Tenants share scarce capacity by weight, on real Postgres: one tenant's backlog cannot starve
another's job, and a tenant's spend cap bounds what is dispatched for it."""
from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter

from sqlalchemy import insert

from scheduler.fleet import Fleet
from scheduler.loop import Scheduler, default_policy
from scheduler.policy import FAIR_SHARE_REASON, TENANT_BUDGET_REASON
from scheduler.storage import Database, JobStatus, utcnow
from scheduler.storage.tables import Job, Tenant
from scheduler.tick import TickReport, run_tick
from tests.conftest import make_settings
from tests.integration.tickkit import register_workers

# The default fleet's cap (64 jobs a tick per model) bounds capacity, not measured speed.
SETTINGS = {"plan_horizon_s": 3600.0}


def backlog(db: Database, tenant: str, count: int, created_at: dt.datetime) -> list[str]:
    """``count`` pending jobs of ``tenant``, written in one statement (intake is not under test)."""
    rows = [{"id": str(uuid.uuid4()), "owner": tenant, "status": JobStatus.PENDING, "prompt": f"{tenant} job {i}",
             "max_tokens": 32, "temperature": 0.0, "attempts": 0, "request_hash": "x", "on_deadline_miss": "run_late",
             "created_at": created_at + dt.timedelta(microseconds=i), "updated_at": created_at,
             "expires_at": created_at + dt.timedelta(days=1)} for i in range(count)]
    with db.session() as session:
        for start in range(0, count, 5000):
            session.execute(insert(Job), rows[start:start + 5000])
    return [row["id"] for row in rows]


def tenant(db: Database, name: str, now: dt.datetime, **limits: object) -> None:
    with db.session() as session:
        session.add(Tenant(name=name, weight=1.0, created_at=now, updated_at=now, **limits))


def tick(db: Database, fleet: Fleet, now: dt.datetime) -> TickReport:
    settings = make_settings(db.url, **SETTINGS)
    scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None)
    return run_tick(scheduler.window_store, scheduler.policy, fleet, None, settings, now)


def test_one_job_of_tenant_b_is_not_starved_by_tenant_a_s_20000(pg_db: Database, fleet: Fleet) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    backlog(pg_db, "a", 20_000, now - dt.timedelta(hours=2))
    [b_job] = backlog(pg_db, "b", 1, now)          # a moment later: younger than every job of a
    first = tick(pg_db, fleet, now)
    placed = {a.job_id for a in first.plan.assignments}
    assert b_job in placed                          # dispatched in the first tick after it arrived
    assert len(placed) == 128                       # and capacity was not left idle for it


def test_capacity_is_shared_by_weight(pg_db: Database, fleet: Fleet) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    tenant(pg_db, "big", now)
    with pg_db.session() as session:
        session.get(Tenant, "big").weight = 3.0     # type: ignore[union-attr]
    backlog(pg_db, "big", 1000, now - dt.timedelta(minutes=5))
    small = backlog(pg_db, "small", 1000, now - dt.timedelta(hours=1))   # older, yet weighs less
    report = tick(pg_db, fleet, now)
    owners = Counter("small" if a.job_id in set(small) else "big" for a in report.plan.assignments)
    assert owners == {"big": 96, "small": 32}
    waiting = [d for d in report.plan.deferrals if d.job_id in set(small)]
    assert waiting and all(d.reason == FAIR_SHARE_REASON for d in waiting)


def test_a_tenant_spend_cap_bounds_what_is_dispatched(pg_db: Database, fleet: Fleet) -> None:
    now = utcnow()
    register_workers(pg_db, fleet.names, now)
    probe = tick_cost(pg_db, fleet, now)
    tenant(pg_db, "capped", now, max_spend_usd=3.5 * probe)
    backlog(pg_db, "capped", 10, now)
    report = tick(pg_db, fleet, now)
    assert len(report.plan.assignments) == 3
    assert sum(a.predicted_cost_usd for a in report.plan.assignments) <= 3.5 * probe
    assert {d.reason for d in report.plan.deferrals} == {TENANT_BUDGET_REASON}


def tick_cost(db: Database, fleet: Fleet, now: dt.datetime) -> float:
    """The predicted cost of one job like those above on the cheapest model (a dry run)."""
    backlog(db, "probe", 1, now)
    settings = make_settings(db.url, **SETTINGS)
    scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None)
    [assignment] = run_tick(scheduler.window_store, scheduler.policy, fleet, None, settings, now,
                            dry_run=True).plan.assignments
    with db.session() as session:
        session.query(Job).filter(Job.owner == "probe").delete()
    return assignment.predicted_cost_usd
