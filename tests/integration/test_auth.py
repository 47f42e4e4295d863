"""API keys, tenants and per-tenant limits on a real Postgres.

A tenant key sees only its tenant's objects (another tenant's answer 404, exactly like ids that do
not exist); no key, a bad key or a revoked key is a 401; an admin key sees every tenant and may act
for one; the pending-jobs limit and the spend cap refuse new work (429, 402) and write nothing; the
request rate limit answers 429 with Retry-After.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from scheduler.api.app import create_app
from scheduler.errors import TooManyPendingJobs
from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec
from scheduler.storage import Database, JobStatus, JobStore, TenantStore, utcnow
from scheduler.storage.tables import ApiKey, Batch, Job
from tests.conftest import bearer, create_api_key, make_settings

OPEN_PATHS = {"/healthz", "/readyz"}  # and /docs, /openapi.json, which the OpenAPI document does not list


@pytest.fixture
def app_client(pg_db: Database, fleet: Fleet) -> Iterator[TestClient]:
    """The API with no default key: each test says which key each request sends."""
    with TestClient(create_app(make_settings(pg_db.url, api_key_cache_s=0), pg_db, fleet)) as client:
        yield client


@pytest.fixture
def keys(pg_db: Database) -> dict[str, dict[str, str]]:
    return {"a": bearer(create_api_key(pg_db, "tenant-a")), "b": bearer(create_api_key(pg_db, "tenant-b")),
            "admin": bearer(create_api_key(pg_db, "ops", admin=True))}


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (session.scalar(select(func.count()).select_from(Job)) or 0,
                session.scalar(select(func.count()).select_from(Batch)) or 0)


def submit(client: TestClient, key: dict[str, str], prompt: str = "hi", **fields: Any) -> httpx.Response:
    return client.post("/v1/jobs", json={"prompt": prompt, **fields}, headers=key)


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "detail"} and words in body["error"]["message"], body


# -- isolation --------------------------------------------------------------------------------
def test_a_tenant_sees_only_its_own_jobs_and_batches(app_client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    a, b = keys["a"], keys["b"]
    job = submit(app_client, a).json()
    batch = app_client.post("/v1/batches", json={"jobs": [{"prompt": "x"}]}, headers=a).json()
    assert job["owner"] == "tenant-a" and batch["owner"] == "tenant-a"
    batch_id = batch["id"]

    # B is told exactly what it would be told for ids that do not exist.
    for path, method in [(f"/v1/jobs/{job['id']}", "GET"), (f"/v1/batches/{batch_id}", "GET"),
                         (f"/v1/jobs/{job['id']}/cancel", "POST")]:
        theirs = app_client.request(method, path, headers=b)
        missing = app_client.request(method, path.replace(job["id"], "nope").replace(batch_id, "nope"), headers=b)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["message"].replace(job["id"], "ID").replace(batch_id, "ID") == \
            missing.json()["error"]["message"].replace("nope", "ID")
    assert app_client.post(f"/v1/jobs/{job['id']}/feedback", json={"score": 1}, headers=b).status_code == 404
    assert app_client.get("/v1/jobs", headers=b).json()["jobs"] == []
    assert app_client.get("/v1/jobs", params={"batch_id": batch_id}, headers=b).json()["jobs"] == []
    # Nothing B did changed A's job.
    assert app_client.get(f"/v1/jobs/{job['id']}", headers=a).json()["status"] == "pending"


def test_idempotency_keys_are_per_tenant(app_client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    first = submit(app_client, keys["a"], idempotency_key="k")
    other = submit(app_client, keys["b"], prompt="different", idempotency_key="k")
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.json()["id"] != other.json()["id"]


# -- 401 ----------------------------------------------------------------------------------------
def test_no_key_a_bad_key_and_a_revoked_key_are_401(app_client: TestClient, pg_db: Database,
                                                     keys: dict[str, dict[str, str]]) -> None:
    created = TenantStore(pg_db).create_key("tenant-a", utcnow())
    key = created.key
    job_id = submit(app_client, bearer(key)).json()["id"]
    TenantStore(pg_db).revoke_key(created.row.id, utcnow())
    cases = [({}, "missing API key: send the header 'Authorization: Bearer <key>'"),
             (bearer("sy-not-a-key"), "invalid API key"),
             ({"Authorization": f"Basic {key}"}, "the Authorization header must be 'Bearer <key>'"),
             ({"Authorization": "Bearer"}, "the Authorization header must be 'Bearer <key>'"),
             (bearer(key), "this API key was revoked")]
    for headers, words in cases:
        for method, path in [("GET", f"/v1/jobs/{job_id}"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs")]:
            response = app_client.request(method, path, headers=headers, json={"prompt": "x"})
            assert_error(response, 401, words)
            assert response.headers["www-authenticate"] == "Bearer"
    assert counts(pg_db) == (1, 0)
    assert app_client.get(f"/v1/jobs/{job_id}", headers=keys["a"]).status_code == 200  # other keys still work


def test_every_route_but_health_and_docs_needs_a_key(app_client: TestClient) -> None:
    """Whatever routes the app has (new routers included), each answers 401 without a key."""
    checked = 0
    for template, operations in app_client.get("/openapi.json").json()["paths"].items():
        if template in OPEN_PATHS:
            continue
        path = re.sub(r"\{[^}]+\}", "some-id", template)
        for method in operations:
            response = app_client.request(method.upper(), path, json={})
            assert response.status_code == 401, (method, path, response.text)
            checked += 1
    assert checked >= 9
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert app_client.get(path).status_code == 200, path


def test_the_openapi_document_declares_bearer_auth(app_client: TestClient) -> None:
    schema = app_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


# -- admin ------------------------------------------------------------------------------------
def test_an_admin_sees_every_tenant_and_may_act_for_one(app_client: TestClient,
                                                        keys: dict[str, dict[str, str]]) -> None:
    a_job = submit(app_client, keys["a"]).json()
    b_job = submit(app_client, keys["b"]).json()
    admin = keys["admin"]
    assert {j["id"] for j in app_client.get("/v1/jobs", headers=admin).json()["jobs"]} == {a_job["id"], b_job["id"]}
    assert app_client.get(f"/v1/jobs/{b_job['id']}", headers=admin).json()["owner"] == "tenant-b"

    as_a = admin | {"X-Switchyard-Tenant": "tenant-a"}
    assert [j["id"] for j in app_client.get("/v1/jobs", headers=as_a).json()["jobs"]] == [a_job["id"]]
    assert app_client.get(f"/v1/jobs/{b_job['id']}", headers=as_a).status_code == 404
    created = submit(app_client, as_a, prompt="for a").json()
    assert created["owner"] == "tenant-a"
    assert app_client.get(f"/v1/jobs/{created['id']}", headers=keys["a"]).status_code == 200
    assert app_client.post(f"/v1/jobs/{a_job['id']}/cancel", headers=as_a).json()["status"] == "cancelled"
    # Acting for nobody, an admin's new objects belong to its own tenant.
    assert submit(app_client, admin).json()["owner"] == "ops"


def test_a_tenant_key_cannot_act_for_another_tenant(app_client: TestClient, pg_db: Database,
                                                    keys: dict[str, dict[str, str]]) -> None:
    response = submit(app_client, keys["a"] | {"X-Switchyard-Tenant": "tenant-b"})
    assert_error(response, 403, "belongs to tenant 'tenant-a' and is not an admin key")
    assert counts(pg_db) == (0, 0)
    own = submit(app_client, keys["a"] | {"X-Switchyard-Tenant": "tenant-a"})
    assert own.status_code == 201 and own.json()["owner"] == "tenant-a"
    bad = submit(app_client, keys["admin"] | {"X-Switchyard-Tenant": "no spaces"})
    assert bad.status_code == 422 and "x-switchyard-tenant" in bad.json()["error"]["message"]


def test_last_used_is_recorded_without_a_write_per_request(app_client: TestClient, pg_db: Database) -> None:
    key = bearer(create_api_key(pg_db, "tenant-a"))

    def last_used() -> Any:
        with pg_db.session() as session:
            return session.scalar(select(ApiKey.last_used_at))

    assert last_used() is None
    app_client.get("/v1/jobs", headers=key)
    first = last_used()
    assert first is not None
    app_client.get("/v1/jobs", headers=key)
    assert last_used() == first  # within the minute: not written again


# -- limits -----------------------------------------------------------------------------------
def test_pending_jobs_limit_is_429_and_writes_nothing(app_client: TestClient, pg_db: Database,
                                                      keys: dict[str, dict[str, str]]) -> None:
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), max_pending_jobs=3)
    a = keys["a"]
    first = submit(app_client, a, idempotency_key="first").json()
    app_client.post("/v1/batches", json={"jobs": [{"prompt": "1"}, {"prompt": "2"}]}, headers=a)
    with pg_db.session() as session:  # queued jobs count too
        session.execute(update(Job).where(Job.id == first["id"]).values(status=JobStatus.QUEUED))
    assert counts(pg_db) == (3, 1)

    assert_error(submit(app_client, a), 429, "at most 3 pending and queued jobs (max_pending_jobs); it has 3")
    big = app_client.post("/v1/batches", json={"jobs": [{"prompt": "x"}]}, headers=a)
    assert_error(big, 429, "max_pending_jobs")
    assert counts(pg_db) == (3, 1)
    # A retried submit is the same job again, not new work.
    assert submit(app_client, a, idempotency_key="first").status_code == 200
    # Another tenant is not limited by A's limit.
    assert submit(app_client, keys["b"]).status_code == 201

    # Finished work frees room; a batch is admitted whole or not at all.
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == first["id"]).values(status=JobStatus.SUCCEEDED))
    two = app_client.post("/v1/batches", json={"jobs": [{"prompt": "x"}, {"prompt": "y"}]}, headers=a)
    assert_error(two, 429, "it has 2, and this request adds 2")
    assert submit(app_client, a).status_code == 201
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), max_pending_jobs=None)
    assert submit(app_client, a).status_code == 201


def test_concurrent_submissions_never_overrun_the_pending_limit(pg_db: Database) -> None:
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), max_pending_jobs=5)
    store = JobStore(pg_db)
    outcomes: list[str] = []
    start = threading.Barrier(12)

    def one(i: int) -> None:
        start.wait()
        try:
            store.submit_job("tenant-a", JobSpec(prompt=f"job {i}"), utcnow())
            outcomes.append("created")
        except TooManyPendingJobs:
            outcomes.append("refused")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("created") == 5 and counts(pg_db) == (5, 0)


def test_spend_cap_is_402_and_writes_nothing(app_client: TestClient, pg_db: Database,
                                             keys: dict[str, dict[str, str]]) -> None:
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), max_spend_usd=0.01)
    a = keys["a"]
    done, running, waiting = (submit(app_client, a, prompt=p).json()["id"] for p in ("done", "running", "waiting"))
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == done).values(status=JobStatus.SUCCEEDED, cost_usd=0.006))
        session.execute(update(Job).where(Job.id == running).values(status=JobStatus.RUNNING,
                                                                     predicted_cost_usd=0.003))
        session.execute(update(Job).where(Job.id == waiting).values(predicted_cost_usd=0.5))  # pending: no reservation
    assert submit(app_client, a).status_code == 201  # $0.009 spent or reserved: under the cap
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == running).values(predicted_cost_usd=0.004))
    before = counts(pg_db)
    assert_error(submit(app_client, a), 402, "reached its spend cap: $0.010000 spent or reserved of max_spend_usd "
                                             "$0.010000")
    assert_error(app_client.post("/v1/batches", json={"jobs": [{"prompt": "x"}]}, headers=a), 402, "spend cap")
    assert counts(pg_db) == before
    assert submit(app_client, keys["b"]).status_code == 201
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), max_spend_usd=1.0)
    assert submit(app_client, a).status_code == 201


def test_request_rate_limit_is_429_with_retry_after(app_client: TestClient, pg_db: Database,
                                                    keys: dict[str, dict[str, str]]) -> None:
    TenantStore(pg_db).set_tenant("tenant-a", utcnow(), requests_per_minute=3)
    a = keys["a"]
    assert [app_client.get("/v1/jobs", headers=a).status_code for _ in range(3)] == [200, 200, 200]
    limited = app_client.get("/v1/jobs", headers=a)
    assert_error(limited, 429, "limited to 3 requests per minute (requests_per_minute); retry in")
    assert 1 <= int(limited.headers["retry-after"]) <= 20  # one request's token: 60 s / 3
    assert_error(submit(app_client, a), 429, "requests_per_minute")
    assert counts(pg_db) == (0, 0)
    # Other tenants, and an admin acting for A, spend their own budgets.
    assert app_client.get("/v1/jobs", headers=keys["b"]).status_code == 200
    assert app_client.get("/v1/jobs", headers=keys["admin"] | {"X-Switchyard-Tenant": "tenant-a"}).status_code == 200
    # Health stays open and unlimited.
    assert app_client.get("/healthz").status_code == 200


def test_a_revoked_key_stops_working_once_the_key_cache_has_expired(pg_db: Database, fleet: Fleet) -> None:
    created = TenantStore(pg_db).create_key("tenant-a", utcnow())
    with TestClient(create_app(make_settings(pg_db.url, api_key_cache_s=0.5), pg_db, fleet)) as client:
        assert submit(client, bearer(created.key)).status_code == 201      # looked up, then remembered
        TenantStore(pg_db).revoke_key(created.row.id, utcnow())
        assert client.get("/v1/jobs", headers=bearer(created.key)).status_code == 200   # within the cache
        time.sleep(0.6)
        assert_error(client.get("/v1/jobs", headers=bearer(created.key)), 401, "this API key was revoked")
