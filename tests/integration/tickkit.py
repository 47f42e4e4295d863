"""Helpers for tick tests: submit jobs, register live workers, read what reached Redis."""
from __future__ import annotations

import base64
import datetime as dt
import json

import redis

from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec
from scheduler.storage import Beat, Database, HeartbeatStore, JobStore
from scheduler.queues import queue_name


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
