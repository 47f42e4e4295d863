"""The Celery app, built from settings (never at import time)."""
from __future__ import annotations

from celery import Celery

from scheduler.settings import Settings


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the dispatcher (publishing) and the workers (consuming).

    Delivery is at-least-once (acks_late, reject on worker lost, prefetch 1) and Postgres makes
    it exactly-once in effect: a worker writes a result only through a guarded transition.
    """
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
