"""Who is calling: the tenant a request acts for, and whether it may see every tenant.

Every request under /v1 carries ``Authorization: Bearer <key>``; ``current_caller`` looks the key
up (by its SHA-256, one indexed read), applies its tenant's request rate limit, and returns the
``Caller``. Every route that touches tenant data takes ``CallerDep``; storage is always asked with
``caller.scope``: the tenant's name, or None for an admin key acting for nobody in particular (it
sees every tenant's objects). An object outside the caller's scope is a 404, never a 403, so ids
leak nothing.

An admin key may act for one tenant by naming it in ``X-Switchyard-Tenant``: it then sees only that
tenant's objects and creates objects as that tenant. A tenant key may send the header only with its
own tenant's name (ignored); naming another tenant is a 403, which tells the caller about its own
key and nothing about any other tenant.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.api.limits import RequestRateLimiter
from scheduler.errors import Forbidden, RateLimited, Unauthenticated
from scheduler.storage import Database, KeyOwner, TenantStore, utcnow
from scheduler.storage.tenants import TENANT_NAME_MAX_CHARS, TENANT_NAME_PATTERN

TENANT_HEADER = "X-Switchyard-Tenant"
# last_used_at is written at most this often per key and API process: a request does not pay a
# write, and "last used" is still right to the minute.
KEY_USE_WRITE_INTERVAL_S = 60.0

CREATE_KEY_HINT = "an operator creates keys with `switchyard keys create --tenant NAME`"


@dataclass(frozen=True)
class Caller:
    tenant: str               # the tenant the request acts for: new objects belong to it
    admin: bool = False       # an admin key
    acting_for: bool = False  # an admin key that named a tenant to act for

    @property
    def scope(self) -> str | None:
        """The tenant whose objects this caller may read and change; None: every tenant's."""
        return None if self.admin and not self.acting_for else self.tenant


class Authenticator:
    """The API process's view of keys: who holds a key, its tenant's rate, when it was last used."""

    def __init__(self, db: Database, key_cache_s: float = 0.0) -> None:
        """``key_cache_s``: how long a key's owner (tenant, admin, revoked, rate) is remembered,
        so that most requests pay no database round trip for authentication; a revoked key or a
        changed rate limit then takes effect within that many seconds. Unknown keys are never
        remembered."""
        self.tenants = TenantStore(db)
        self.key_cache_s = key_cache_s
        self.rate_limiter = RequestRateLimiter()
        self._key_use_written_at: dict[str, float] = {}
        self._owners: dict[str, tuple[float, KeyOwner]] = {}   # key -> (looked up at, owner)
        self._lock = threading.Lock()

    def caller(self, key: str | None, acting_for: str | None) -> Caller:
        if not key:
            raise Unauthenticated(f"missing API key: send the header 'Authorization: Bearer <key>' ({CREATE_KEY_HINT})")
        owner = self._owner(key)
        if owner is None:
            raise Unauthenticated(f"invalid API key: no such key; send a key you were given ({CREATE_KEY_HINT})")
        if owner.revoked:
            raise Unauthenticated("this API key was revoked; ask for a new one")
        self._limit_rate(owner)
        self._record_use(owner.key_id)
        if acting_for is None or (acting_for == owner.tenant and not owner.admin):
            return Caller(tenant=owner.tenant, admin=owner.admin)
        if not owner.admin:
            raise Forbidden(f"this key belongs to tenant {owner.tenant!r} and is not an admin key: it cannot act "
                            f"for tenant {acting_for!r}; drop the {TENANT_HEADER} header")
        return Caller(tenant=acting_for, admin=True, acting_for=True)

    def _owner(self, key: str) -> KeyOwner | None:
        now = time.monotonic()
        with self._lock:
            cached = self._owners.get(key)
        if cached is not None and now - cached[0] < self.key_cache_s:
            return cached[1]
        owner = self.tenants.key_owner(key)
        if owner is not None:
            with self._lock:
                self._owners[key] = (now, owner)
        return owner

    def _limit_rate(self, owner: KeyOwner) -> None:
        """The key's own tenant's limit (an admin acting for another tenant spends its own)."""
        if owner.requests_per_minute is None:
            return
        wait_s = self.rate_limiter.take(owner.tenant, owner.requests_per_minute, time.monotonic())
        if wait_s > 0:
            raise RateLimited(f"tenant {owner.tenant!r} is limited to {owner.requests_per_minute} requests per "
                              f"minute (requests_per_minute); retry in {math.ceil(wait_s)} s", retry_after_s=wait_s)

    def _record_use(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            written_at = self._key_use_written_at.get(key_id)
            if written_at is not None and now - written_at < KEY_USE_WRITE_INTERVAL_S:
                return
            self._key_use_written_at[key_id] = now
        self.tenants.record_key_use(key_id, utcnow())


# auto_error=False: a missing or malformed header gets our own 401 in the one error shape. The
# scheme also puts the "Authorize" button on /docs.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sy-...`.")


def current_caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        x_switchyard_tenant: Annotated[str | None, Header(
            max_length=TENANT_NAME_MAX_CHARS, pattern=TENANT_NAME_PATTERN,
            description="Admin keys only: the tenant to act for (its objects only, new ones belong to it).")] = None,
) -> Caller:
    if credentials is None and request.headers.get("authorization"):
        raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.caller(credentials.credentials if credentials else None, x_switchyard_tenant)


CallerDep = Annotated[Caller, Depends(current_caller)]
