"""Exactly one tick leader at a time, fenced so that a stale leader can never commit.

Election: on Postgres a session-level advisory lock held on a dedicated connection for as long as
the leader lives (if its process dies the connection drops and the lock is freed); on SQLite
(embedded, one machine) an exclusive ``flock`` on a file next to the database.

Fencing: a lock alone cannot stop a leader that lost it without noticing (its lock connection was
terminated while it was planning) from committing beside its successor. So every new leader
raises the epoch in the one-row ``leadership`` table, and every tick's transaction ends with
``confirm_term``: an UPDATE that matches only while the epoch is still the one this leader
raised. Row locks serialise the two: a successor's raise waits for a running tick to commit,
and a tick whose leader was superseded updates nothing and rolls back.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

from scheduler.errors import LostLeadership
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.tables import Leadership

log = logging.getLogger(__name__)

# Any fixed 64-bit number; it names "the Switchyard tick" among advisory locks.
TICK_LOCK_KEY = 0x5717C4A8D
LEADERSHIP_ROW = 1
# A new leader waits at most this long for the old leader's running tick before giving up (it
# retries at its next interval); a dead old leader's transaction is rolled back by Postgres.
TAKEOVER_LOCK_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class LeaderTerm:
    """Who leads, under which epoch. A tick commits only while this is still the current term."""

    epoch: int
    holder: str


def confirm_term(session: Session, term: LeaderTerm, now: dt.datetime) -> None:
    """Inside a tick's transaction, just before it commits: still the leader? Records the tick
    time for monitoring. Raises LostLeadership (the caller rolls back) when a successor took over."""
    still = rows_affected(session.execute(
        update(Leadership).where(Leadership.id == LEADERSHIP_ROW, Leadership.epoch == term.epoch)
        .values(last_tick_at=now)))
    if not still:
        raise LostLeadership(f"{term.holder} lost leadership (epoch {term.epoch} superseded); plan not committed")


class LeaderLock:
    def __init__(self, db: Database, holder: str | None = None) -> None:
        self.db = db
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.term: LeaderTerm | None = None
        self._connection: Connection | None = None
        self._file: IO[str] | None = None

    def try_acquire(self, now: dt.datetime) -> LeaderTerm | None:
        """The current term if this process leads (checking that its lock is still alive), else
        None; never blocks for long. Raises only on database errors (the caller retries)."""
        if self.term is not None and self._lock_alive():
            return self.term
        self.release()
        if not self._take_lock():
            return None
        try:
            self.term = self._raise_epoch(now)
        except Exception:
            self.release()
            raise
        log.info("leading the tick as %s (epoch %d)", self.holder, self.term.epoch)
        return self.term

    def release(self) -> None:
        """Give leadership up. Never raises: it runs on error paths, often with the database gone."""
        self.term = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TICK_LOCK_KEY})
                connection.commit()
            except Exception as exc:  # noqa: BLE001 - a dead connection has already freed the lock
                log.debug("advisory unlock failed (the lock went with its connection): %s", exc)
            try:
                connection.invalidate()
                connection.close()
            except Exception:  # noqa: BLE001
                pass
        if self._file is not None:
            handle, self._file = self._file, None
            try:
                fcntl.flock(handle, fcntl.LOCK_UN)
            finally:
                handle.close()

    def _lock_alive(self) -> bool:
        """A file lock lives as long as this process; an advisory lock as long as its connection:
        if that connection died (database restarted, connection terminated), leadership is gone."""
        if self._file is not None:
            return True
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means the lock may be gone
            log.warning("the leader's lock connection is gone (%s); leadership lost", exc)
            return False

    def _take_lock(self) -> bool:
        if self.db.is_sqlite:
            return self._try_file_lock()
        connection = self.db.engine.connect()
        try:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": TICK_LOCK_KEY}).scalar())
            connection.commit()
        except Exception:
            connection.close()
            raise
        if got:
            self._connection = connection
        else:
            connection.close()
        return got

    def _raise_epoch(self, now: dt.datetime) -> LeaderTerm:
        with self.db.session() as session:
            if not self.db.is_sqlite:
                session.execute(text(f"SET LOCAL lock_timeout = {TAKEOVER_LOCK_TIMEOUT_MS}"))
            epoch = session.scalar(
                update(Leadership).where(Leadership.id == LEADERSHIP_ROW)
                .values(epoch=Leadership.epoch + 1, holder=self.holder, acquired_at=now)
                .returning(Leadership.epoch))
            if epoch is None:
                epoch = 1
                session.execute(insert(Leadership).values(id=LEADERSHIP_ROW, epoch=epoch, holder=self.holder,
                                                          acquired_at=now))
        return LeaderTerm(int(epoch), self.holder)

    def _try_file_lock(self) -> bool:
        database = make_url(self.db.url).database or "switchyard"
        handle = Path(f"{database}.tick-lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True


def current_leader(db: Database) -> Leadership | None:
    """The leadership row as the database has it (for status and tests)."""
    with db.session() as session:
        return session.scalar(select(Leadership).where(Leadership.id == LEADERSHIP_ROW))
