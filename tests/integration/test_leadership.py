"""Leadership on real Postgres: one leader, fenced, and a scheduler loop that outlives outages.

A leader whose lock connection is terminated keeps believing it leads until it checks; the
epoch fence makes that harmless: once a successor has taken over, the stale leader's tick rolls
back instead of committing beside it.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select, text

from scheduler.errors import LostLeadership
from scheduler.fleet import Fleet, load_fleet
from scheduler.loop import Scheduler, default_policy
from scheduler.storage import Database, JobStatus, utcnow
from scheduler.storage.leader import LeaderLock, current_leader
from scheduler.storage.tables import Decision, Job, Tick
from tests.conftest import POSTGRES_ADMIN_DSN, make_settings
from tests.integration.test_backlog import backlog, workers
from tests.integration.test_production_scheduling import FLEET


@pytest.fixture
def fleet2(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return load_fleet(path)


def scheduler_for(db: Database, fleet: Fleet, **overrides: object) -> Scheduler:
    settings = make_settings(db.url, **({"plan_horizon_s": 30.0} | overrides))
    return Scheduler(settings, db, fleet, default_policy(fleet, settings), dispatcher=None)


def lock_backend_pid(lock: LeaderLock) -> int:
    connection = lock._connection   # the test reaches into the lock to cut exactly its connection
    assert connection is not None
    return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    """Kill one backend and wait until it has exited, so the advisory locks it held are free.

    Without the wait a successor may try the lock while the dying backend still holds it.
    """
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


def count(db: Database, table: object) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_one_leader_at_a_time_and_each_takeover_raises_the_epoch(pg_db: Database) -> None:
    first, second = LeaderLock(pg_db, "first"), LeaderLock(pg_db, "second")
    term = first.try_acquire(utcnow())
    assert term is not None and term.holder == "first"
    assert second.try_acquire(utcnow()) is None
    assert first.try_acquire(utcnow()) == term            # still held: same term
    first.release()
    taken = second.try_acquire(utcnow())
    assert taken is not None and taken.epoch == term.epoch + 1
    leader = current_leader(pg_db)
    assert leader is not None and (leader.holder, leader.epoch) == ("second", taken.epoch)
    second.release()


def test_a_stale_leader_cannot_commit_after_a_successor_took_over(pg_db: Database, fleet2: Fleet) -> None:
    now = utcnow()
    workers(pg_db, now)
    backlog(pg_db, now, 5)
    stale_lock, successor_lock = LeaderLock(pg_db, "stale"), LeaderLock(pg_db, "successor")
    stale_term = stale_lock.try_acquire(now)
    assert stale_term is not None
    terminate(lock_backend_pid(stale_lock))   # its lock is gone; it does not know yet
    successor_term = successor_lock.try_acquire(now)
    assert successor_term is not None and successor_term.epoch > stale_term.epoch

    with pytest.raises(LostLeadership):
        scheduler_for(pg_db, fleet2).tick(term=stale_term)
    assert count(pg_db, Decision) == count(pg_db, Tick) == 0          # the whole tick rolled back
    with pg_db.session() as session:
        assert set(session.scalars(select(Job.status))) == {JobStatus.PENDING}

    # Checking its lock, the stale leader finds it gone and stands by; the successor ticks.
    assert stale_lock.try_acquire(utcnow()) is None
    report = scheduler_for(pg_db, fleet2).tick(term=successor_term)
    assert len(report.plan.assignments) == 5
    with pg_db.session() as session:
        assert set(session.scalars(select(Tick.epoch))) == {successor_term.epoch}
    successor_lock.release()
    stale_lock.release()


def test_the_loop_outlives_a_database_that_refuses_connections(pg_db: Database, fleet2: Fleet) -> None:
    name = pg_db.url.rsplit("/", 1)[1]
    scheduler = scheduler_for(pg_db, fleet2, tick_interval_s=0.2, outage_retry_max_s=1.0)
    stop = threading.Event()
    loop = threading.Thread(target=scheduler.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while (leader := current_leader(pg_db)) is None or leader.last_tick_at is None:
            assert time.monotonic() < deadline, "the scheduler never ticked"
            time.sleep(0.1)
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                              "AND pid <> pg_backend_pid()", (name,))
                time.sleep(3)
                assert loop.is_alive()
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        recovered_at = utcnow()
        pg_db.dispose()
        deadline = time.monotonic() + 5
        while (leader := current_leader(pg_db)) is None or leader.last_tick_at is None \
                or leader.last_tick_at < recovered_at:
            assert time.monotonic() < deadline, "the scheduler did not tick again within 5 s of recovery"
            time.sleep(0.1)
        assert loop.is_alive()
        assert leader.epoch >= 2      # the lock went with its connection: leadership was re-taken
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
