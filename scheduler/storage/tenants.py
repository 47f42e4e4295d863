"""Tenants, their API keys and the limits that admit (or refuse) their new jobs.

A key is shown once, when it is created, and stored only as its SHA-256: the database never
holds a usable key. Keys are 256 random bits, so a plain hash (no salt, no slow KDF) is enough,
and it lets a request find its key with one indexed lookup.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from scheduler.errors import NotFound, SpendCapReached, SwitchyardError, TooManyPendingJobs
from scheduler.storage.database import Database
from scheduler.storage.tables import ApiKey, Job, Tenant
from scheduler.storage.types import JobStatus
from scheduler.storage.window import committed_spend

KEY_PREFIX = "sy-"
SHOWN_PREFIX_CHARS = 10          # "sy-" and 7 random characters: enough to tell keys apart in a list
TENANT_NAME_PATTERN = r"^[A-Za-z0-9._@:-]+$"
TENANT_NAME_MAX_CHARS = 128
# Jobs that count against max_pending_jobs: waiting for a tick, or planned and waiting for a worker.
WAITING_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED)
# The tenant limits `TenantStore.set_tenant` changes (None: unlimited).
LIMIT_FIELDS = ("max_spend_usd", "max_pending_jobs", "requests_per_minute")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyOwner:
    """What a presented key says about its caller."""
    key_id: str
    tenant: str
    admin: bool
    revoked: bool
    requests_per_minute: int | None   # the key's tenant's rate limit (None: unlimited)


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str                          # the only time the key itself exists outside its holder


class TenantStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants --------------------------------------------------------------------------
    def set_tenant(self, name: str, now: dt.datetime, *, weight: float | None = None,
                   **limits: float | int | None) -> Tenant:
        """Create the tenant or change it. A limit passed as None becomes unlimited; one not
        passed keeps its value (a new tenant: unlimited, weight 1)."""
        unknown = set(limits) - set(LIMIT_FIELDS)
        if unknown:
            raise TypeError(f"unknown tenant limits: {sorted(unknown)}")
        with self._session() as session:
            tenant = self._ensure(session, name, now)
            if weight is not None:
                tenant.weight = weight
            for field, value in limits.items():
                setattr(tenant, field, value)
            tenant.updated_at = now
            return tenant

    def get_tenant(self, name: str) -> Tenant | None:
        with self._session() as session:
            return session.get(Tenant, name)

    def list_tenants(self) -> list[Tenant]:
        with self._session() as session:
            return list(session.scalars(select(Tenant).order_by(Tenant.name)))

    # -- keys -----------------------------------------------------------------------------
    def create_key(self, tenant: str, now: dt.datetime, *, admin: bool = False, name: str | None = None) -> CreatedKey:
        """A new key for ``tenant`` (the tenant is created, unlimited, if it does not exist)."""
        key = new_key()
        row = ApiKey(id=str(uuid.uuid4()), tenant=tenant, admin=admin, key_hash=hash_key(key),
                     prefix=key[:SHOWN_PREFIX_CHARS], name=name, created_at=now)
        with self._session() as session:
            self._ensure(session, tenant, now)
            session.flush()
            session.add(row)
        return CreatedKey(row, key)

    def list_keys(self) -> list[ApiKey]:
        with self._session() as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)))

    def revoke_key(self, key_id: str, now: dt.datetime) -> ApiKey:
        """Revoke a key for good (revoking it again changes nothing)."""
        with self._session() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id}; `switchyard keys list` shows their ids")
            if row.revoked_at is None:
                row.revoked_at = now
            return row

    def has_active_keys(self) -> bool:
        with self.db.session() as session:
            return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None

    def key_owner(self, key: str) -> KeyOwner | None:
        """Who holds ``key`` (None: no such key). One indexed lookup by the key's hash."""
        with self.db.session() as session:
            found = session.execute(
                select(ApiKey.id, ApiKey.tenant, ApiKey.admin, ApiKey.revoked_at, Tenant.requests_per_minute)
                .join(Tenant, Tenant.name == ApiKey.tenant).where(ApiKey.key_hash == hash_key(key))).first()
        if found is None:
            return None
        key_id, tenant, admin, revoked_at, requests_per_minute = found
        return KeyOwner(key_id, tenant, admin, revoked_at is not None, requests_per_minute)

    def record_key_use(self, key_id: str, now: dt.datetime) -> None:
        with self.db.session() as session:
            session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _ensure(session: Session, name: str, now: dt.datetime) -> Tenant:
        tenant = session.get(Tenant, name)
        if tenant is None:
            tenant = Tenant(name=name, weight=1.0, created_at=now, updated_at=now)
            session.add(tenant)
        return tenant

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session for the operator commands, which may run before `switchyard db upgrade` did."""
        try:
            with self.db.session() as session:
                yield session
        except (OperationalError, ProgrammingError) as exc:
            if "tenants" in str(exc.orig) or "api_keys" in str(exc.orig):
                raise SwitchyardError(f"the database has no tenants or api_keys table: run `switchyard db "
                                      f"upgrade` first ({self.db.url})") from exc
            raise


def admit_jobs(session: Session, owner: str, new_jobs: int) -> None:
    """Refuse ``new_jobs`` the owner's limits do not allow, raising TooManyPendingJobs or
    SpendCapReached. Call it in the transaction that inserts the jobs, before inserting them.

    Owners without a tenants row, and tenants without these limits, pay one primary-key read. The
    spend counts what finished jobs cost and what queued and running jobs reserve (their predicted
    cost); new jobs are pending and reserve nothing until the tick dispatches them, where it checks
    the cap again."""
    tenant = session.get(Tenant, owner)
    if tenant is None:
        return
    if tenant.max_pending_jobs is not None:
        # Lock the row and re-read the limit under the lock: the tenant's concurrent submissions
        # are then admitted one at a time, so together they cannot overrun the limit.
        session.refresh(tenant, with_for_update=True)
    if tenant.max_pending_jobs is not None:  # as read under the lock
        waiting = session.scalar(select(func.count()).select_from(Job).where(
            Job.owner == owner, Job.status.in_(WAITING_STATUSES))) or 0
        if waiting + new_jobs > tenant.max_pending_jobs:
            raise TooManyPendingJobs(
                f"tenant {owner!r} may have at most {tenant.max_pending_jobs} pending and queued jobs "
                f"(max_pending_jobs); it has {waiting}, and this request adds {new_jobs}; nothing was "
                "written. Wait for some to finish, or submit fewer.")
    if tenant.max_spend_usd is not None:
        # The tick checks the same sum when it dispatches: one definition of what a tenant spent.
        spent = committed_spend(session, Job.owner, {owner}).get(owner, 0.0)
        if spent >= tenant.max_spend_usd:
            raise SpendCapReached(
                f"tenant {owner!r} has reached its spend cap: ${spent:.6f} spent or reserved of "
                f"max_spend_usd ${tenant.max_spend_usd:.6f}; nothing was written. An operator can raise "
                "the cap.")

