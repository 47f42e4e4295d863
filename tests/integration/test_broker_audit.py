"""The broker audit on real Redis: messages published by the real dispatcher, held by a real kombu
consumer with late acks, and lost the way a Redis restart loses them.

Run with SWITCHYARD_TEST_REDIS_URL pointing at a database nobody else uses; the fixture flushes it.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kombu
import pytest
import redis
from celery import Celery

from scheduler.broker_audit import BrokerAuditFailed, find_lost_dispatches
from scheduler.dispatch import CeleryDispatcher
from scheduler.plan import Dispatch
from tests.conftest import make_settings
from scheduler.queues import make_celery
from scheduler.queues import TASK_NAME, queue_name, task_kwargs

SMOL, GEMMA = "smollm2-135m", "gemma-3-270m"


def celery_app(broker_url: str, tmp_path: Path, **transport_options: object) -> Celery:
    app = make_celery(make_settings(f"sqlite:///{tmp_path / 'unused.db'}", broker_url))
    app.conf.broker_transport_options = dict(app.conf.broker_transport_options) | transport_options
    return app


def publish(app: Celery, model: str, count: int) -> list[str]:
    dispatches = [Dispatch(str(uuid.uuid4()), model, (str(uuid.uuid4()),)) for _ in range(count)]
    report = CeleryDispatcher(app).publish(dispatches)
    assert report.published == count, report.failed
    return [dispatch.dispatch_id for dispatch in dispatches]


@contextmanager
def consumer_holding_one(app: Celery, model: str) -> Iterator[kombu.Message]:
    """A real kombu consumer that takes one message from the model's queue and does not ack it
    (what a Celery worker with acks_late does while it runs the task)."""
    name = queue_name(model)
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name)
    held: list[kombu.Message] = []
    with app.connection_for_read() as connection:
        channel = connection.channel()
        consumer = kombu.Consumer(channel, [queue], callbacks=[lambda _body, message: held.append(message)],
                                  accept=["json"], no_ack=False)
        consumer.qos(prefetch_count=1)
        with consumer:
            connection.drain_events(timeout=10)
            assert len(held) == 1
            yield held[0]
        channel.close()


def test_publish_names_each_message_after_its_dispatch(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path)
    dispatch_ids = publish(app, SMOL, 2)
    with consumer_holding_one(app, SMOL) as message:
        assert message.headers["id"] in dispatch_ids
        assert message.payload[1]["dispatch_id"] == message.headers["id"]  # (args, kwargs, embed)
        message.ack()


def test_nothing_is_missing_while_every_message_is_waiting_or_unacked(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path)
    smol, gemma = publish(app, SMOL, 3), publish(app, GEMMA, 2)
    queued = {SMOL: smol, GEMMA: gemma}
    assert find_lost_dispatches(app, queued) == set()
    with consumer_holding_one(app, SMOL):
        assert find_lost_dispatches(app, queued) == set()
    # Closing a consumer without acking hands its message back to the queue: still not lost.
    assert find_lost_dispatches(app, queued) == set()


def test_a_dispatch_that_never_reached_the_broker_is_missing(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path)
    published = publish(app, SMOL, 2)
    never_published = str(uuid.uuid4())
    assert find_lost_dispatches(app, {SMOL: [*published, never_published]}) == {never_published}


def test_lost_queues_are_missing_but_the_message_a_worker_holds_is_not(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path)
    smol, gemma = publish(app, SMOL, 3), publish(app, GEMMA, 2)
    queued = {SMOL: smol, GEMMA: gemma}
    client = redis.Redis.from_url(redis_url)
    try:
        with consumer_holding_one(app, SMOL) as message:
            held = message.headers["id"]
            # The waiting messages go (as in a restart that kept only what was delivered).
            client.delete(queue_name(SMOL), queue_name(GEMMA))
            assert find_lost_dispatches(app, queued) == (set(smol) | set(gemma)) - {held}
            # A real restart (nothing on disk) also drops the unacked hash: now everything is lost.
            client.flushdb()
            assert find_lost_dispatches(app, queued) == set(smol) | set(gemma)
            message.ack()  # the worker finishing after the restart: acking a forgotten message is harmless
    finally:
        client.close()


def test_a_message_unacked_too_long_with_its_jobs_unclaimed_is_lost(redis_url: str, tmp_path: Path) -> None:
    """A worker takes one message at a time and claims its jobs at once: one that holds a message
    for minutes while Postgres still says its jobs are queued died before claiming them."""
    app = celery_app(redis_url, tmp_path)
    smol = publish(app, SMOL, 1)
    with consumer_holding_one(app, SMOL) as message:
        assert find_lost_dispatches(app, {SMOL: smol}) == set()
        time.sleep(0.2)
        assert find_lost_dispatches(app, {SMOL: smol}, stale_unacked_s=0.1) == set(smol)
        message.ack()


def test_messages_in_priority_lists_count(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path)
    dispatch_id = str(uuid.uuid4())
    app.send_task(TASK_NAME, kwargs=task_kwargs(dispatch_id, SMOL, ["job"]), queue=queue_name(SMOL),
                  task_id=dispatch_id, priority=9)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(queue_name(SMOL)) == 0  # kombu put it in the list of its priority step
        assert find_lost_dispatches(app, {SMOL: [dispatch_id]}) == set()
    finally:
        client.close()


def test_a_global_key_prefix_is_honoured(redis_url: str, tmp_path: Path) -> None:
    app = celery_app(redis_url, tmp_path, global_keyprefix="switchyard:")
    smol = publish(app, SMOL, 2)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"switchyard:{queue_name(SMOL)}") == 2
        with consumer_holding_one(app, SMOL) as message:
            assert client.hlen("switchyard:unacked") == 1
            assert find_lost_dispatches(app, {SMOL: smol}) == set()
            client.delete(f"switchyard:{queue_name(SMOL)}")
            assert find_lost_dispatches(app, {SMOL: smol}) == set(smol) - {message.headers["id"]}
            message.ack()
    finally:
        client.close()


@pytest.mark.parametrize("broker", ["memory://", "sqla+sqlite:///{tmp}/broker.db"])
def test_other_transports_cannot_be_audited(broker: str, tmp_path: Path) -> None:
    app = celery_app(broker.format(tmp=tmp_path), tmp_path)
    assert find_lost_dispatches(app, {SMOL: [str(uuid.uuid4())]}) is None
    assert not (tmp_path / "broker.db").exists()  # the audit did not even connect


def test_an_unreachable_redis_is_a_failure_not_a_loss(tmp_path: Path) -> None:
    app = celery_app("redis://127.0.0.1:1/0", tmp_path)
    with pytest.raises(BrokerAuditFailed):
        find_lost_dispatches(app, {SMOL: [str(uuid.uuid4())]})


def test_nothing_to_audit_needs_no_broker(tmp_path: Path) -> None:
    assert find_lost_dispatches(celery_app("redis://127.0.0.1:1/0", tmp_path), {}) == set()
