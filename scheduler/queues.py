"""The message contract between the tick (publisher) and the workers (consumers).

Both planes import it from here, so the scheduler never imports the workers' package. One Celery
task per (model, micro-batch), published to the queue ``model.<name>`` only after the plan that
created it is committed, with the dispatch id as its task id. The message carries ids only:
Postgres holds the jobs.

Delivery is at-least-once (acks_late, reject on worker lost, prefetch 1) and Postgres makes it
exactly-once in effect: a worker writes a result only through a guarded transition.
"""
from __future__ import annotations

from celery import Celery

from scheduler.settings import Settings

TASK_NAME = "switchyard.run_batch"


def queue_name(model: str) -> str:
    """The Celery queue a model's workers consume."""
    return f"model.{model}"


def task_kwargs(dispatch_id: str, model: str, job_ids: list[str]) -> dict[str, object]:
    return {"dispatch_id": dispatch_id, "model": model, "job_ids": job_ids}


def make_celery(settings: Settings) -> Celery:
    """The Celery app of both sides: the dispatcher publishes with it, the workers consume."""
    app = Celery("switchyard", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        # Loading a model (and assembling chunked weights) takes longer than Celery's 4 s default.
        worker_proc_alive_timeout=300.0,
        broker_transport_options=_transport_options(settings.broker_url),
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(broker_url: str) -> dict[str, object]:
    if broker_url.startswith("sqla+"):
        # kombu hands these to SQLAlchemy's create_engine: wait for SQLite's lock, don't fail.
        return {"connect_args": {"timeout": 30}}
    if broker_url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacked message after this; Postgres leases recover sooner anyway.
        return {"visibility_timeout": 3600}
    return {}
