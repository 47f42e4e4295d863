"""A batch's alpha is a mean over the whole batch, across ticks, on real Postgres and Celery.

A batch is planned over many ticks, so the tick counts the jobs its earlier ticks dispatched in
the batch's quality row (optimizer/problem.py, "settled" jobs). Before it did, a job deferred to
lift one tick's mean waited alone, once its batch-mates had run, for headroom it could never get.
With the default fleet's priors: SmolLM2 p = 0.35, Gemma p = 0.40.
"""
from __future__ import annotations

import datetime as dt

from scheduler.fleet import Fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.policy import BATCH_QUALITY_REASON
from scheduler.storage import Database, JobStore, utcnow
from tests.integration.test_tick import make_scheduler, tick_at
from tests.integration.tickkit import register_workers

ALPHA = 0.38          # between the two priors
SMOLLM2, GEMMA = "smollm2-135m", "gemma-3-270m"


def submit_batch(db: Database, free_jobs: int, now: dt.datetime) -> list[str]:
    """A batch of ``free_jobs`` jobs any model may run, then one only SmolLM2 may run."""
    jobs = [JobSpec(prompt=f"question {i}") for i in range(free_jobs)]
    jobs.append(JobSpec(prompt="only for SmolLM2", allowed_models=[SMOLLM2]))
    _batch, ids, _created = JobStore(db).submit_batch("default", BatchSpec(jobs=jobs, alpha=ALPHA), now)
    return ids


def test_a_job_held_back_for_its_batchs_mean_runs_once_its_batch_mates_lift_it(
        pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, [GEMMA], now)          # no SmolLM2 worker yet: the pinned job waits
    ids = submit_batch(pg_db, 2, now)
    scheduler = make_scheduler(pg_db, fleet, redis_url)

    first = tick_at(scheduler, now)
    assert {a.job_id: a.model for a in first.plan.assignments} == {ids[0]: GEMMA, ids[1]: GEMMA}
    assert [p.predicted_quality for p in first.plan.assignments] == [0.4, 0.4]

    register_workers(pg_db, [SMOLLM2, GEMMA], now)
    second = tick_at(scheduler, now + dt.timedelta(seconds=1))
    # Alone, its p of 0.35 is below alpha; with the two dispatched jobs the batch's mean is 0.383.
    assert [(a.job_id, a.model) for a in second.plan.assignments] == [(ids[2], SMOLLM2)]


def test_a_job_that_would_pull_its_whole_batch_below_alpha_still_waits(
        pg_db: Database, fleet: Fleet, redis_url: str) -> None:
    now = utcnow()
    register_workers(pg_db, [GEMMA], now)
    ids = submit_batch(pg_db, 1, now)
    scheduler = make_scheduler(pg_db, fleet, redis_url)
    assert [a.job_id for a in tick_at(scheduler, now).plan.assignments] == [ids[0]]

    register_workers(pg_db, [SMOLLM2, GEMMA], now)
    second = tick_at(scheduler, now + dt.timedelta(seconds=1))
    # (0.40 + 0.35) / 2 = 0.375 < 0.38: the batch's mean, not one tick's, is what holds it back.
    assert second.plan.assignments == ()
    assert [(d.job_id, d.reason) for d in second.plan.deferrals] == [(ids[1], BATCH_QUALITY_REASON)]
