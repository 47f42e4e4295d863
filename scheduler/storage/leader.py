"""Exactly one tick leader at a time.

Postgres: a session-level advisory lock held on a dedicated connection for as long as the
leader lives; if its process dies the connection drops and the lock is freed. SQLite (embedded,
one machine): an exclusive ``flock`` on a file next to the database.
"""
from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from scheduler.storage.database import Database

# Any fixed 64-bit number; it names "the Switchyard tick" among advisory locks.
TICK_LOCK_KEY = 0x5717C4A8D


class LeaderLock:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: Connection | None = None
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        """Become the leader if nobody else is; never blocks."""
        if self.held:
            return True
        if self.db.is_sqlite:
            return self._try_file_lock()
        connection = self.db.engine.connect()
        got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": TICK_LOCK_KEY}).scalar())
        connection.commit()
        if got:
            self._connection = connection
        else:
            connection.close()
        return got

    @property
    def held(self) -> bool:
        return self._connection is not None or self._file is not None

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TICK_LOCK_KEY})
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

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
