"""Shared fixtures: real Postgres databases, real Redis, SQLite files, settings.

Postgres and Redis are the machine's own services (``scripts/ensure-services.sh`` starts them).
Each test session gets a fresh Postgres database, migrated with the real migrations, and each
test starts from empty tables.
"""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import text

from scheduler.fleet import Fleet, load_fleet
from scheduler.settings import Settings
from scheduler.storage import Database, TenantStore, utcnow
from scheduler.storage.migrate import upgrade_database
from scheduler.storage.tables import Base

# Test infrastructure addresses (not product settings); override to point at other servers.
POSTGRES_ADMIN_DSN = os.environ.get("SWITCHYARD_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REPO_ROOT = Path(__file__).resolve().parents[1]


def create_postgres_database() -> str:
    """A new empty database; returns its SQLAlchemy URL."""
    name = f"switchyard_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = create_postgres_database()
    upgrade_database(url)
    yield url
    drop_postgres_database(url)


@pytest.fixture
def pg_db(postgres_url: str) -> Iterator[Database]:
    """The session's Postgres database with every table emptied."""
    db = Database(postgres_url)
    with db.session() as session:
        names = ", ".join(table.name for table in Base.metadata.sorted_tables)
        session.execute(text(f"TRUNCATE {names} CASCADE"))
    yield db
    db.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'switchyard.db'}"
    upgrade_database(url)
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


@pytest.fixture
def fleet() -> Fleet:
    return load_fleet(Settings().fleet_file)


def make_settings(database_url: str, broker_url: str = "memory://", **overrides: object) -> Settings:
    return Settings(database_url=database_url, broker_url=broker_url, **overrides)  # type: ignore[arg-type]


def create_api_key(db: Database, tenant: str = "default", *, admin: bool = False) -> str:
    """A new API key of ``tenant`` (created if new), made as the operator's `keys create` makes it."""
    return TenantStore(db).create_key(tenant, utcnow(), admin=admin, name="test").key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder, so `-m "not integration and not e2e"` runs the pure tests only
    (unit/: plain values; integration/: real Postgres and Redis; e2e/: real worker processes)."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))
