"""The engine and session factory, built from settings (never at import time)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult, Engine, Result, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from scheduler.errors import StorageUnavailable


class Database:
    """One engine and its sessions. ``session()`` commits on success and translates outages."""

    def __init__(self, url: str, *, echo: bool = False, pre_ping: bool = True) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url, echo=echo, pre_ping=pre_ping)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self, *, rollback_only: bool = False) -> Iterator[Session]:
        """A transaction: committed when the block ends (rolled back instead with
        ``rollback_only``, for dry runs), rolled back on any error."""
        try:
            with self._sessions() as session:
                with session.begin() as transaction:
                    yield session
                    if rollback_only:
                        transaction.rollback()
        except (OperationalError, InterfaceError) as exc:
            if _is_connection_error(exc):
                raise StorageUnavailable(f"database unavailable: {exc.orig}") from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()


def rows_affected(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE touched (guarded transitions read this to know if they won)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _is_connection_error(exc: DBAPIError) -> bool:
    # Lock timeouts and constraint problems are OperationalErrors on SQLite too; only a lost or
    # refused connection is an outage the caller should retry.
    return bool(exc.connection_invalidated) or "connect" in str(exc.orig).lower() or "closed" in str(exc.orig).lower()


def _make_engine(url: str, *, echo: bool, pre_ping: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=pre_ping, pool_size=5, max_overflow=10)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The embedded default has the API, the tick and workers in separate processes on one file:
    # WAL lets readers run beside the writer, and we take SQLite's transaction handling over
    # so that every transaction starts with BEGIN IMMEDIATE (below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when
    # another process wrote in between; taking the write lock up front makes it wait instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
