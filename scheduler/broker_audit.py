"""Find dispatches whose Celery message is gone from the broker (a Redis restart, a flushed database).

Postgres says a job is ``queued`` with a ``dispatch_id`` and a queue lease; the message that carries
it lives only on the broker. Redis here keeps nothing on disk, so a restart silently drops every
message, and without this audit those jobs wait out the whole queue lease (15 minutes by default).
The dispatcher publishes each task with ``task_id = dispatch_id``, so a message names its dispatch
(Celery protocol 2 header ``id``), and the audit can compare the two sides.

Where a message can be, on kombu's Redis transport (``kombu/transport/redis.py``):

* waiting: in the queue's list, one list per priority step (``Channel._q_for_pri``: the queue name
  itself for step 0, ``<queue><sep><step>`` for the others; ``Channel.priority_steps``);
* delivered to a consumer and not yet acked (a worker running it, with acks_late): in the
  ``unacked`` hash (``Channel.unacked_key``), whose values are ``[payload, exchange, routing_key]``.

Every key carries the transport's ``global_keyprefix``, if one is configured.

Only the Redis transport can be audited. The embedded default (kombu's SQLAlchemy transport over
SQLite) and the in-memory transport return None, and there the queue lease stays the only way a
lost message is recovered.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from celery import Celery

from scheduler.errors import SwitchyardError
from scheduler.queues import queue_name

log = logging.getLogger(__name__)


class BrokerAuditFailed(SwitchyardError):
    """The broker could not be read; nothing can be said about its messages this time."""


# A worker claims a message's jobs the moment it takes the message (prefetch 1, acks_late: the one
# unacked message a worker process holds is the one it runs). A message unacked for longer while
# Postgres still says its jobs are queued was taken by a worker that died before claiming them:
# kombu would redeliver it only after its visibility timeout (an hour), so it counts as lost.
# Long enough to cover a worker retrying its claim through a short database outage.
STALE_UNACKED_S = 120.0


def find_lost_dispatches(app: Celery, queued_by_model: Mapping[str, Collection[str]],
                         stale_unacked_s: float = STALE_UNACKED_S) -> set[str] | None:
    """The dispatch ids of ``queued_by_model`` whose message is nowhere on the broker.

    ``queued_by_model`` maps a model name to the dispatch ids Postgres holds as queued for it. A
    dispatch counts as present if a message with its id is waiting in the model's queue (any
    priority) or was delivered to a consumer less than ``stale_unacked_s`` ago and not yet acked.
    The rest are returned.

    Returns None when the app's broker is not Redis: the audit cannot see those transports' messages,
    and the queue lease remains the fallback. Raises BrokerAuditFailed when Redis cannot be read
    (it is down or restarting); that is "unknown", never "everything is lost".

    The contract for acting on the answer, because one audit alone can be wrong:

    * Read Postgres first, then audit. A message published after the audit's snapshot of the
      broker, or one not yet visible, would look lost: only pass dispatches older than a grace
      period (10 s or more, well above the gap between committing a plan and publishing it).
    * A worker pops a message (BRPOP) and only then records it as unacked: for that moment it is in
      neither place. Treat a dispatch as lost only if it is missing from two consecutive audits
      several seconds apart (``LostDispatchConfirmation`` keeps that count).
    * Re-plan a lost dispatch's jobs with a guarded update (only jobs still ``queued`` under that
      same dispatch_id): a worker may have claimed them meanwhile. If the message does reappear
      (it was not lost after all), the worker's claim, which checks the dispatch_id, skips the jobs.

    The queue lists and the unacked hash are read in one Redis transaction (a consistent snapshot,
    so a message restored from unacked to its list in between is not missed), at a cost that grows
    with the number of messages waiting in the audited queues.
    """
    if not queued_by_model:
        return set()
    with app.connection_for_read() as connection:
        if connection.transport.driver_type != "redis":
            return None
        try:
            channel = connection.channel()
        except connection.connection_errors + connection.channel_errors as exc:
            raise BrokerAuditFailed(f"cannot read the broker: {type(exc).__name__}: {exc}") from exc
        try:
            present = _dispatch_ids_on_redis(channel, [queue_name(model) for model in queued_by_model],
                                             unacked_since=time.time() - stale_unacked_s)
        except connection.connection_errors + connection.channel_errors as exc:
            raise BrokerAuditFailed(f"cannot read the broker: {type(exc).__name__}: {exc}") from exc
        finally:
            channel.close()
    queued = {dispatch_id for dispatch_ids in queued_by_model.values() for dispatch_id in dispatch_ids}
    return queued - present


def _dispatch_ids_on_redis(channel: Any, queues: Iterable[str], unacked_since: float) -> set[str]:
    """The task ids of every message waiting in ``queues`` or delivered and unacked (any queue)
    since ``unacked_since`` (a Unix time: kombu's ``unacked_index`` scores deliveries by it)."""
    import redis

    # A plain client on the channel's own pool (same URL parsing, TLS, sentinel), prefixing keys
    # ourselves: kombu's prefixing client only knows the commands kombu itself sends, not LRANGE/HVALS.
    prefix = channel.global_keyprefix or ""
    # _q_for_pri is kombu's own naming of a queue's per-priority lists (its _size and _get use it).
    list_keys = [prefix + channel._q_for_pri(queue, step) for queue in queues for step in channel.priority_steps]
    client = redis.Redis(connection_pool=channel.pool)
    try:
        with client.pipeline(transaction=True) as pipe:
            for key in list_keys:
                pipe.lrange(key, 0, -1)
            pipe.hgetall(prefix + channel.unacked_key)
            pipe.zrangebyscore(prefix + channel.unacked_index_key, unacked_since, "+inf")
            *waiting_lists, unacked, recent_tags = pipe.execute()
    finally:
        client.close()
    task_ids = [_task_id(raw) for raw_messages in waiting_lists for raw in raw_messages]
    recent = set(recent_tags)
    task_ids += [_task_id(raw, unacked_entry=True) for tag, raw in unacked.items() if tag in recent]
    return {task_id for task_id in task_ids if task_id is not None}


def _task_id(raw: bytes, unacked_entry: bool = False) -> str | None:
    """The Celery task id (our dispatch_id) of one stored message, or None if it has none."""
    try:
        stored = json.loads(raw)
        # An unacked entry is ``[payload, exchange, routing_key]``; a waiting one is the payload.
        payload = stored[0] if unacked_entry else stored
        task_id = payload.get("headers", {}).get("id") or payload.get("properties", {}).get("correlation_id")
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        log.debug("skipping a broker message that is not a Celery task: %.200r", raw)
        return None
    return str(task_id) if task_id else None


class LostDispatchConfirmation:
    """Confirms a dispatch as lost only once audits have kept missing it for ``min_gap_s``.

    Feed it every successful audit's answer. A dispatch is confirmed when it was missing in an
    audit at least ``min_gap_s`` ago and in every audit since; any audit that does not report it
    (its message was found, or the caller no longer asked about it) starts its count again. With
    audits every few seconds this is "missing in two consecutive audits several seconds apart":
    a message that a worker was popping at the first audit is unacked (found) at the next one.
    """

    def __init__(self, min_gap_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_gap_s = min_gap_s
        self.clock = clock
        self._first_missing_at: dict[str, float] = {}

    def confirm(self, missing: Collection[str]) -> set[str]:
        """Record one audit's missing dispatch ids; return those now confirmed lost."""
        now = self.clock()
        self._first_missing_at = {dispatch_id: self._first_missing_at.get(dispatch_id, now)
                                  for dispatch_id in missing}
        return {dispatch_id for dispatch_id, since in self._first_missing_at.items()
                if now - since >= self.min_gap_s}

    def forget(self, dispatch_ids: Iterable[str]) -> None:
        """Drop dispatches the caller has re-planned, so they are not confirmed again."""
        for dispatch_id in dispatch_ids:
            self._first_missing_at.pop(dispatch_id, None)
