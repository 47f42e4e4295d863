"""The REST API on a real Postgres: submit, get, list, cancel, idempotency, and every bad input."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from scheduler.api.app import create_app
from scheduler.fleet import Fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.storage import Database, JobStatus
from scheduler.storage.tables import Batch, Job
from tests.conftest import bearer, create_api_key, make_settings


@pytest.fixture
def api(pg_db: Database, fleet: Fleet) -> Iterator[TestClient]:
    settings = make_settings(pg_db.url, max_body_bytes=64 * 1024, max_jobs_per_request=50, max_tokens_limit=1024)
    with TestClient(create_app(settings, pg_db, fleet), headers=bearer(create_api_key(pg_db, "default"))) as client:
        yield client


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(Job)), session.scalar(
            select(func.count()).select_from(Batch))


def test_submit_get_list_cancel(api: TestClient) -> None:
    created = api.post("/v1/jobs", json={"prompt": "What is 2+2?", "max_tokens": 16, "min_quality": 0.2})
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "pending" and job["owner"] == "default" and job["max_tokens"] == 16

    assert api.get(f"/v1/jobs/{job['id']}").json()["prompt"] == "What is 2+2?"
    chat = api.post("/v1/jobs", json={"messages": [{"role": "user", "content": "hi"}]}).json()

    listed = api.get("/v1/jobs", params={"limit": 1}).json()
    assert [j["id"] for j in listed["jobs"]] == [chat["id"]]  # newest first
    second = api.get("/v1/jobs", params={"limit": 1, "cursor": listed["next_cursor"]}).json()
    assert [j["id"] for j in second["jobs"]] == [job["id"]] and second["next_cursor"] is None
    assert api.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"] == []

    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_batch_is_written_whole(api: TestClient, pg_db: Database) -> None:
    response = api.post("/v1/batches", json={"name": "b", "alpha": 0.5, "jobs": [
        {"prompt": "one"}, {"prompt": "two", "allowed_models": ["gemma-3-270m"]}]})
    assert response.status_code == 201
    body = response.json()
    assert len(body["job_ids"]) == 2 and body["counts"] == {"pending": 2}
    assert (body["object"], body["status"], body["request_counts"]) == (
        "batch", "in_progress", {"total": 2, "completed": 0, "failed": 0})
    assert api.get(f"/v1/batches/{body['id']}").json()["done"] is False
    listed = api.get("/v1/jobs", params={"batch_id": body["id"]}).json()["jobs"]
    assert {j["id"] for j in listed} == set(body["job_ids"])
    assert counts(pg_db) == (2, 1)


def test_idempotent_job_submit(api: TestClient, pg_db: Database) -> None:
    first = api.post("/v1/jobs", json={"prompt": "once", "idempotency_key": "k1"})
    again = api.post("/v1/jobs", json={"prompt": "once", "idempotency_key": "k1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api.post("/v1/jobs", json={"prompt": "different", "idempotency_key": "k1"})
    assert other.status_code == 409 and "different request" in other.json()["error"]["message"]
    assert counts(pg_db) == (1, 0)


def test_idempotent_batch_submit(api: TestClient, pg_db: Database) -> None:
    batch = {"idempotency_key": "b1", "jobs": [{"prompt": "a"}, {"prompt": "b"}]}
    first = api.post("/v1/batches", json=batch)
    again = api.post("/v1/batches", json=batch)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["job_ids"] == first.json()["job_ids"]
    assert counts(pg_db) == (2, 1)


BAD_REQUESTS = [
    ("empty prompt", {"prompt": "   "}, 422, "empty"),
    ("no prompt", {"max_tokens": 5}, 422, "exactly one"),
    ("prompt and messages", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422, "exactly one"),
    ("unknown model", {"prompt": "a", "allowed_models": ["gpt-9"]}, 422, "unknown model"),
    ("absurd max_tokens", {"prompt": "a", "max_tokens": 10_000_000}, 422, "max_tokens"),
    ("zero max_tokens", {"prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
    ("bad temperature", {"prompt": "a", "temperature": 9}, 422, "temperature"),
    ("unknown field", {"prompt": "a", "colour": "red"}, 422, "colour"),
    ("naive deadline", {"prompt": "a", "deadline": "2030-01-01T00:00:00"}, 422, "time zone"),
    ("past deadline", {"prompt": "a", "deadline": "2000-01-01T00:00:00Z"}, 422, "past"),
    ("quality above 1", {"prompt": "a", "min_quality": 1.5}, 422, "min_quality"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 422, "role"),
    ("zero max_pending_s", {"prompt": "a", "max_pending_s": 0}, 422, "max_pending_s"),
    ("max_pending_s under a second", {"prompt": "a", "max_pending_s": 0.5}, 422, "max_pending_s"),
    ("max_pending_s over 366 days", {"prompt": "a", "max_pending_s": 366 * 86_400 + 1}, 422, "max_pending_s"),
]


@pytest.mark.parametrize(("case", "body", "status", "words"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_job_is_a_clear_4xx_and_writes_nothing(api: TestClient, pg_db: Database, case: str, body: dict,
                                                   status: int, words: str) -> None:
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert counts(pg_db) == (0, 0)


def test_malformed_json_is_400(api: TestClient, pg_db: Database) -> None:
    response = api.post("/v1/jobs", content=b'{"prompt": "a",', headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"].startswith("malformed JSON body: ")
    assert counts(pg_db) == (0, 0)


def test_oversized_body_is_413(api: TestClient, pg_db: Database) -> None:
    body = json.dumps({"prompt": "x" * 100_000}).encode()
    assert api.post("/v1/jobs", content=body, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the middleware counts the bytes
        yield body[:50_000]
        yield body[50_000:]

    response = api.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["error"]["message"]
    assert counts(pg_db) == (0, 0)


def test_one_bad_job_rejects_the_whole_batch(api: TestClient, pg_db: Database) -> None:
    response = api.post("/v1/batches", json={"jobs": [{"prompt": "fine"}, {"prompt": "x", "max_tokens": 99_999}]})
    assert response.status_code == 422 and "jobs[1]" in response.json()["error"]["message"]
    too_many = api.post("/v1/batches", json={"jobs": [{"prompt": "p"}] * 51})
    assert too_many.status_code == 422 and "limit is 50" in too_many.json()["error"]["message"]
    assert api.post("/v1/batches", json={"jobs": []}).status_code == 422
    assert counts(pg_db) == (0, 0)


def test_reused_job_key_in_batch_is_409_and_writes_nothing(api: TestClient, pg_db: Database) -> None:
    api.post("/v1/jobs", json={"prompt": "a", "idempotency_key": "taken"})
    response = api.post("/v1/batches", json={"jobs": [{"prompt": "b"}, {"prompt": "c", "idempotency_key": "taken"}]})
    assert response.status_code == 409
    assert counts(pg_db) == (1, 0)


def test_not_found_and_conflicts(api: TestClient) -> None:
    assert api.get("/v1/jobs/nope").status_code == 404
    assert api.get("/v1/batches/nope").status_code == 404
    assert api.post("/v1/jobs/nope/cancel").status_code == 404
    assert api.get("/v1/jobs", params={"cursor": "!!!"}).status_code == 422
    assert api.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_models_health_and_openapi(api: TestClient) -> None:
    listed = api.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["auto", "smollm2-135m", "gemma-3-270m"]
    assert {m["object"] for m in listed["data"]} == {"model"}
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


def test_feedback_labels_a_succeeded_job(api: TestClient, pg_db: Database) -> None:
    job = api.post("/v1/jobs", json={"prompt": "2+2?", "reference": "4", "grader": "numeric"}).json()
    assert (job["reference"], job["grader"], job["score"]) == ("4", "numeric", None)
    early = api.post(f"/v1/jobs/{job['id']}/feedback", json={"score": 1.0})
    assert early.status_code == 409 and "succeeded" in early.json()["error"]["message"]
    with pg_db.session() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status=JobStatus.SUCCEEDED))
    scored = api.post(f"/v1/jobs/{job['id']}/feedback", json={"score": 0.25})
    assert scored.status_code == 200
    assert (scored.json()["score"], scored.json()["score_source"]) == (0.25, "feedback")
    assert api.post(f"/v1/jobs/{job['id']}/feedback", json={"score": 2}).status_code == 422
    assert api.post("/v1/jobs", json={"prompt": "x", "grader": "exact"}).status_code == 422  # no reference


def pending_for(job: dict) -> float:
    """Seconds between a job's creation and its expiry, from the API's answer."""
    return (dt.datetime.fromisoformat(job["expires_at"]) - dt.datetime.fromisoformat(job["created_at"])).total_seconds()


def test_max_pending_sets_expires_at(api: TestClient, pg_db: Database, fleet: Fleet) -> None:
    default = api.post("/v1/jobs", json={"prompt": "a"}).json()
    assert pending_for(default) == 86_400 and default["notes"] is None
    assert pending_for(api.post("/v1/jobs", json={"prompt": "b", "max_pending_s": 60}).json()) == 60
    year = api.post("/v1/jobs", json={"prompt": "c", "max_pending_s": 366 * 86_400})
    assert year.status_code == 201 and pending_for(year.json()) == 366 * 86_400
    # A deadline after the expiry is allowed: the job expires first.
    late = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    assert api.post("/v1/jobs", json={"prompt": "d", "max_pending_s": 60, "deadline": late}).status_code == 201

    # A job's own max_pending_s wins over its batch's, which wins over the setting.
    batch = api.post("/v1/batches", json={"max_pending_s": 120, "jobs": [
        {"prompt": "e"}, {"prompt": "f", "max_pending_s": 30.5}]}).json()
    jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in batch["job_ids"]]
    assert [pending_for(job) for job in jobs] == [120, 30.5]

    settings = make_settings(pg_db.url, max_pending_s=300)
    with TestClient(create_app(settings, pg_db, fleet), headers=api.headers) as other:
        assert pending_for(other.post("/v1/jobs", json={"prompt": "g"}).json()) == 300
        batched = other.post("/v1/batches", json={"jobs": [{"prompt": "h"}]}).json()
        assert pending_for(other.get(f"/v1/jobs/{batched['job_ids'][0]}").json()) == 300


def test_max_pending_is_part_of_the_idempotent_request(api: TestClient, pg_db: Database) -> None:
    first = api.post("/v1/jobs", json={"prompt": "once", "max_pending_s": 60, "idempotency_key": "k"})
    again = api.post("/v1/jobs", json={"prompt": "once", "max_pending_s": 60, "idempotency_key": "k"})
    assert (first.status_code, again.status_code) == (201, 200)
    other = api.post("/v1/jobs", json={"prompt": "once", "max_pending_s": 61, "idempotency_key": "k"})
    assert other.status_code == 409 and "different request" in other.json()["error"]["message"]
    batch = {"idempotency_key": "b", "max_pending_s": 60, "jobs": [{"prompt": "a"}]}
    assert api.post("/v1/batches", json=batch).status_code == 201
    assert api.post("/v1/batches", json=batch | {"max_pending_s": 90}).status_code == 409
    assert api.post("/v1/batches", json=batch | {"jobs": [{"prompt": "a", "max_pending_s": 9}]}).status_code == 409
    assert counts(pg_db) == (2, 1)


def test_request_hash_of_a_request_without_max_pending_is_unchanged() -> None:
    # Hashes stored before max_pending_s existed: a retry that spans the upgrade still matches.
    assert JobSpec(prompt="a").request_hash() == "b85acf53e6f0a36e1363ceef404fcbc0ad7adacee4b14dfef3cbe439663b2aac"
    batch = BatchSpec(name="b", jobs=[JobSpec(prompt="a", idempotency_key="j")], idempotency_key="x")
    assert batch.request_hash() == "9ca51e8bfac77742f0c9d9ea31eaf1f576a213f5301f1e30e85badc1e42b9aa0"
