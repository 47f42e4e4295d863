"""Operator commands: ``keys create|list|revoke`` and ``tenants set|list``.

Like ``db upgrade`` they act on the database directly (SWITCHYARD_DATABASE_URL), not through the
API: they are how the first key comes to exist.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Annotated, Any, Optional

import typer

from scheduler.cli.common import clean_errors, fail, settings
from scheduler.storage import Database, TenantStore, utcnow
from scheduler.storage.tables import ApiKey, Tenant
from scheduler.storage.tenants import TENANT_NAME_MAX_CHARS, TENANT_NAME_PATTERN

UNLIMITED = ("none", "unlimited")


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="API keys (on the database directly, like `db upgrade`).", no_args_is_help=True)
    keys.command("create")(create_key)
    keys.command("list")(list_keys)
    keys.command("revoke")(revoke_key)
    app.add_typer(keys, name="keys")
    tenants = typer.Typer(help="Tenants and their limits (on the database directly).", no_args_is_help=True)
    tenants.command("set")(set_tenant)
    tenants.command("list")(list_tenants)
    app.add_typer(tenants, name="tenants")


def _store() -> TenantStore:
    return TenantStore(Database(settings().database_url))


def _tenant_name(name: str) -> str:
    if len(name) > TENANT_NAME_MAX_CHARS or not re.fullmatch(TENANT_NAME_PATTERN, name):
        fail(f"tenant name {name!r}: use at most {TENANT_NAME_MAX_CHARS} letters, digits and . _ @ : -")
    return name


@clean_errors
def create_key(
    tenant: Annotated[str, typer.Option(help="The tenant the key belongs to (created if new).")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: sees every tenant, may act for one.")] = False,
    name: Annotated[Optional[str], typer.Option(help="A label for `keys list`.")] = None,
) -> None:
    """Create an API key and print it: the only time it is shown (only its hash is stored)."""
    created = _store().create_key(_tenant_name(tenant), utcnow(), admin=admin, name=name)
    typer.echo(created.key)
    kind = "admin key" if admin else "key"
    typer.echo(f"created {kind} {created.row.id} for tenant {tenant!r}; it is shown only now: store it "
               "(clients send it as 'Authorization: Bearer <key>', the CLI reads SWITCHYARD_API_KEY)", err=True)


@clean_errors
def list_keys(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False) -> None:
    """List keys: id, tenant, admin, prefix, name, created, last used, revoked (never the key)."""
    rows = [_key_fields(key) for key in _store().list_keys()]
    _print(rows, as_json, title="API keys")


@clean_errors
def revoke_key(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke a key: every request with it answers 401 from now on."""
    row = _store().revoke_key(key_id, utcnow())
    typer.echo(f"revoked key {row.id} ({row.prefix}...) of tenant {row.tenant!r} at {_when(row.revoked_at)}")


@clean_errors
def set_tenant(
    tenant: Annotated[str, typer.Argument(help="The tenant (created if new).")],
    weight: Annotated[Optional[float], typer.Option(help="Its share of scarce capacity (> 0; default 1).")] = None,
    max_spend_usd: Annotated[Optional[str], typer.Option(
        help="Spend cap in USD (finished jobs' cost + queued and running jobs' predicted cost); 'none' lifts it.")] = None,
    max_pending_jobs: Annotated[Optional[str], typer.Option(
        help="Most pending + queued jobs at once; 'none' lifts it.")] = None,
    requests_per_minute: Annotated[Optional[str], typer.Option(
        help="API requests per minute (per API process); 'none' lifts it.")] = None,
) -> None:
    """Create a tenant or change its weight and limits (a limit not given keeps its value)."""
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        fail(f"--weight must be a finite number > 0, not {weight}")
    limits: dict[str, Any] = {}
    if max_spend_usd is not None:
        limits["max_spend_usd"] = _limit("--max-spend-usd", max_spend_usd, float, minimum=0)
    if max_pending_jobs is not None:
        limits["max_pending_jobs"] = _limit("--max-pending-jobs", max_pending_jobs, int, minimum=0)
    if requests_per_minute is not None:
        limits["requests_per_minute"] = _limit("--requests-per-minute", requests_per_minute, int, minimum=1)
    row = _store().set_tenant(_tenant_name(tenant), utcnow(), weight=weight, **limits)
    _print([_tenant_fields(row)], as_json=False, title="tenant")


@clean_errors
def list_tenants(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per tenant.")] = False) -> None:
    """List tenants with their weight and limits (blank: unlimited)."""
    _print([_tenant_fields(row) for row in _store().list_tenants()], as_json, title="tenants")


def _limit(option: str, text: str, kind: type[int] | type[float], minimum: float) -> int | float | None:
    """A limit's value: a number, or 'none' (unlimited)."""
    if text.strip().lower() in UNLIMITED:
        return None
    try:
        value = kind(text)
    except ValueError:
        fail(f"{option} takes a number or 'none', not {text!r}")
        raise  # unreachable
    if not math.isfinite(value) or value < minimum:
        fail(f"{option} must be a finite number >= {minimum}, not {text!r}")
    return value


def _key_fields(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "tenant": key.tenant, "admin": key.admin, "prefix": key.prefix, "name": key.name,
            "created": _when(key.created_at), "last_used": _when(key.last_used_at),
            "revoked": _when(key.revoked_at)}


def _tenant_fields(tenant: Tenant) -> dict[str, Any]:
    return {"name": tenant.name, "weight": tenant.weight, "max_spend_usd": tenant.max_spend_usd,
            "max_pending_jobs": tenant.max_pending_jobs, "requests_per_minute": tenant.requests_per_minute,
            "created": _when(tenant.created_at), "updated": _when(tenant.updated_at)}


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    """One JSON object per line, or a table with a header line."""
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    if not rows:
        typer.echo(f"no {title}")
        return
    # Plain aligned columns, never wrapped or cut: ids are copied from here into `keys revoke`.
    cells = [[column.replace("_", " ") for column in rows[0]]]
    cells += [["-" if value is None else str(value) for value in row.values()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
