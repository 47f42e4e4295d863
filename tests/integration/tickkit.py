"""Helpers for tick tests: submit jobs, register live workers, read what reached Redis."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Sequence

import redis

from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec
from scheduler.plan import Escalation, ModelState, Plan, WindowJob
from scheduler.storage import Beat, Database, HeartbeatStore, JobStore
from scheduler.queues import queue_name
from scheduler.tick import Policy


def submit(db: Database, count: int, now: dt.datetime, **fields: object) -> list[str]:
    store = JobStore(db)
    return [store.submit_job("default", JobSpec(prompt=f"question {i}", **fields), now)[0].id for i in range(count)]


def register_workers(db: Database, models: list[str], now: dt.datetime) -> None:
    """What a worker process does when it has loaded its model: beat."""
    store = HeartbeatStore(db)
    for model in models:
        store.beat(Beat(worker_id=f"{model}@test:1", model=model, host="test", pid=1, concurrency=1, jobs_done=0,
                        tokens_per_s=None, mean_latency_s=None, started_at=now), now)


def published_job_ids(redis_url: str, fleet: Fleet) -> dict[str, list[str]]:
    """model -> job ids in the Celery messages waiting on its queue (kombu's Redis list)."""
    client = redis.Redis.from_url(redis_url)
    found: dict[str, list[str]] = {}
    try:
        for model in fleet.names:
            for raw in client.lrange(queue_name(model), 0, -1):
                message = json.loads(raw)
                _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                assert kwargs["model"] == model
                # Flower's summary of the task: short, whatever the batch size
                assert message["headers"]["kwargsrepr"].endswith(f"job_ids: {len(kwargs['job_ids'])} jobs}}")
                found.setdefault(model, []).extend(kwargs["job_ids"])
    finally:
        client.close()
    return found


class CascadingPolicy:
    """Test double of the policy's cascade *planning* (tested on its own in
    test_cascade_planning.py): the production policy's plan, with a one-step cascade ``first ->
    then`` added to every fresh job it sends to ``first``, ``accept_at`` chosen by the test so the
    judge's verdict is known (above 1 forces the escalation, 0 the accept). It ignores
    ``cascade_allowed`` on purpose: storage and review must still keep ``cascade: false`` jobs to
    one model."""

    def __init__(self, inner: Policy, first: str, then: str, accept_at: float) -> None:
        self.inner, self.first, self.then, self.accept_at = inner, first, then, accept_at

    @property
    def name(self) -> str:
        return f"cascading({self.inner.name})"

    def plan(self, jobs: Sequence[WindowJob], states: Sequence[ModelState], now: dt.datetime, tick_id: str) -> Plan:
        plan = self.inner.plan(jobs, states, now, tick_id)
        fresh = {job.id for job in jobs if job.escalate_to is None}
        step = (Escalation(self.accept_at, self.then),)
        return dataclasses.replace(plan, assignments=tuple(
            dataclasses.replace(a, cascade=step) if a.job_id in fresh and a.model == self.first else a
            for a in plan.assignments))
