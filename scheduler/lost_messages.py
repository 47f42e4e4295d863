"""Jobs whose broker message was lost run again within seconds, not after their queue lease.

Postgres says which jobs are ``queued`` and under which dispatch; the broker should hold one
message per such dispatch, waiting in its model's queue or delivered to a worker and not yet
acknowledged. A broker that restarted without persistence holds none of them. Every
``broker_audit_interval_s`` the leader asks the broker which of the queued dispatches it no
longer holds, and re-plans the jobs of a dispatch that is missing at two audits in a row: a single
miss may be a race (a message a worker has just taken off the queue is, for an instant, in
neither place; a message just published may not be visible yet), two audits apart is not. The
queue lease (``queue_lease_s``) stays the backstop where the broker cannot be audited.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from scheduler.broker_audit import LostDispatchConfirmation
from scheduler.storage.leader import LeaderTerm
from scheduler.storage.window import WindowStore

log = logging.getLogger(__name__)

# model -> dispatch ids Postgres holds as queued  ->  the ids the broker does not hold, or None
# when this broker cannot be audited.
BrokerAudit = Callable[[dict[str, set[str]]], "set[str] | None"]


class LostMessageSweep:
    def __init__(self, store: WindowStore, audit: BrokerAudit | None, interval_s: float) -> None:
        self.store = store
        self.audit = audit
        self.interval_s = interval_s
        # Missing at two audits in a row, at least half an interval apart.
        self._confirmation = LostDispatchConfirmation(min_gap_s=interval_s / 2)
        self._audited_at = -float("inf")

    def run_if_due(self, now: dt.datetime, term: LeaderTerm | None = None) -> int:
        """Audit if the interval has passed; returns how many jobs were re-planned."""
        if self.audit is None or time.monotonic() - self._audited_at < self.interval_s:
            return 0
        self._audited_at = time.monotonic()
        # Only dispatches older than one interval: anything younger was published moments ago.
        queued = self.store.queued_dispatches(now - dt.timedelta(seconds=self.interval_s))
        missing = self.audit(queued) if queued else set()
        if missing is None:
            self.audit = None   # not auditable: leave it to the queue lease from now on
            log.info("this broker cannot be audited for lost messages; the queue lease re-plans them")
            return 0
        confirmed = self._confirmation.confirm(missing)
        replanned = self.store.replan_lost_dispatches(confirmed, now, term)
        self._confirmation.forget(confirmed)
        if replanned:
            log.warning("%d queued job(s) in %d dispatch(es) lost their broker message; re-planned now",
                        replanned, len(confirmed))
        return replanned
