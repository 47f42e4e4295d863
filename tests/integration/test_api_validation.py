"""Bad input on a real Postgres: every case is a 4xx in the one error shape, names the field, writes
nothing, and leaves listing working. A 5xx here is a bug.

Bodies are sent as ``json.dumps`` writes them (ASCII escapes, ``NaN``/``Infinity`` tokens), so a
lone surrogate travels as the JSON escape ``\\udfff``, exactly as a user's client sent it.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from scheduler.api.app import create_app
from scheduler.fleet import Fleet
from scheduler.jobspec import MAX_METADATA_DEPTH
from scheduler.storage import Database, JobStatus, JobStore
from scheduler.storage.tables import Batch, Job
from tests.conftest import bearer, create_api_key, make_settings

JSON = {"content-type": "application/json"}


@pytest.fixture
def api(pg_db: Database, fleet: Fleet) -> Iterator[TestClient]:
    settings = make_settings(pg_db.url, max_body_bytes=64 * 1024, max_jobs_per_request=50, max_tokens_limit=1024)
    with TestClient(create_app(settings, pg_db, fleet), headers=bearer(create_api_key(pg_db, "tenant-a"))) as client:
        yield client


@pytest.fixture
def existing_job(api: TestClient) -> str:
    """One good job of the tenant, so 'listing still works' lists something."""
    response = api.post("/v1/jobs", json={"prompt": "fine"})
    assert response.status_code == 201
    return str(response.json()["id"])


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return (session.scalar(select(func.count()).select_from(Job)) or 0,
                session.scalar(select(func.count()).select_from(Batch)) or 0)


def send(api: TestClient, path: str, body: Any, method: str = "POST") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.request(method, path, content=content, headers=JSON)


def assert_error(response: httpx.Response, status: int, words: str) -> dict[str, Any]:
    """The one error shape, with a message that contains ``words`` (the field it names)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and set(body) <= {"error", "detail"}, body
    assert isinstance(body["error"]["message"], str) and words in body["error"]["message"], body["error"]
    assert isinstance(body.get("detail", []), list)
    return body


def assert_untouched(api: TestClient, db: Database, job_id: str, batches: int = 0) -> None:
    """Nothing was written and the tenant's jobs still list (and read back)."""
    assert counts(db) == (1, batches)
    listed = api.get("/v1/jobs")
    assert listed.status_code == 200, listed.text
    assert [j["id"] for j in listed.json()["jobs"]] == [job_id]
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


# (case, body, words the error must contain: the field, and what is wrong with it)
BAD_JOBS: list[tuple[str, Any, str]] = [
    ("lone surrogate in metadata", {"prompt": "a", "metadata": {"k": "\udfff"}},
     "metadata.k: contains a lone surrogate (\\udfff), which cannot be stored"),
    ("lone surrogate deep in metadata", {"prompt": "a", "metadata": {"a": {"b": ["ok", "x\ud800"]}}},
     "metadata.a.b[1]: contains a lone surrogate (\\ud800)"),
    ("NUL in a metadata key", {"prompt": "a", "metadata": {"k\u0000": 1}},
     "metadata.k\\u0000: the key contains a NUL character"),
    ("lone surrogate in a metadata key", {"prompt": "a", "metadata": {"x": {"\udfff": 1}}},
     "metadata.x.\\udfff: the key contains a lone surrogate"),
    ("NUL in prompt", {"prompt": "a\u0000b"}, "prompt: contains a NUL character (\\u0000), which cannot be stored"),
    ("lone surrogate in prompt", {"prompt": "a\udc00"}, "prompt: contains a lone surrogate (\\udc00)"),
    ("NUL in a message", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "\u0000"}]},
     "messages[1].content: contains a NUL character"),
    ("NUL in a stop string", {"prompt": "a", "stop": ["x", "\u0000"]}, "stop[1]: contains a NUL character"),
    ("NUL in reference", {"prompt": "a", "reference": "4\u0000"}, "reference: contains a NUL character"),
    ("NUL in idempotency_key", {"prompt": "a", "idempotency_key": "k\u0000"},
     "idempotency_key: contains a NUL character"),
    ("NUL in allowed_models", {"prompt": "a", "allowed_models": ["gemma\u0000"]},
     "allowed_models[0]: contains a NUL character"),
    ("NUL in metadata", {"prompt": "a", "metadata": {"note": "\u0000"}}, "metadata.note: contains a NUL character"),
    ("NaN in metadata", {"prompt": "a", "metadata": {"score": float("nan")}},
     "metadata.score: is not a finite number"),
    ("Infinity deep in metadata", {"prompt": "a", "metadata": {"a": [1, {"b": float("inf")}]}},
     "metadata.a[1].b: is not a finite number"),
    ("-Infinity in metadata", {"prompt": "a", "metadata": {"low": float("-inf")}}, "metadata.low: is not a finite"),
    ("metadata nested too deep", {"prompt": "a", "metadata": nested(MAX_METADATA_DEPTH + 5)},
     f"is nested deeper than {MAX_METADATA_DEPTH} levels"),
    ("NaN temperature", {"prompt": "a", "temperature": float("nan")}, "temperature: Input should be a finite number"),
    ("Infinity min_quality", {"prompt": "a", "min_quality": float("inf")}, "min_quality: Input should be a finite"),
    ("NaN max_tokens", {"prompt": "a", "max_tokens": float("nan")}, "max_tokens: "),
    ("1e999 max_cost_usd", b'{"prompt": "a", "max_cost_usd": 1e999}', "max_cost_usd: Input should be a finite"),
    ("1e999 max_pending_s", b'{"prompt": "a", "max_pending_s": 1e999}', "max_pending_s: Input should be a finite"),
    ("deadline beyond the UTC range", {"prompt": "a", "deadline": "9999-12-31T23:00:00-05:00"},
     "deadline: 'deadline' is out of range"),
    ("field name with a lone surrogate", {"prompt": "a", "x\udfff": 1},
     "x\\udfff: the field name contains a lone surrogate"),
    ("field name with a NUL in a message", {"messages": [{"role": "user", "content": "a", "\u0000": 1}]},
     "messages[0].\\u0000: the field name contains a NUL character"),
]


@pytest.mark.parametrize(("case", "body", "words"), BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_unstorable_job_is_a_422_naming_the_field(api: TestClient, pg_db: Database, existing_job: str,
                                                  case: str, body: Any, words: str) -> None:
    assert_error(send(api, "/v1/jobs", body), 422, words)
    assert_untouched(api, pg_db, existing_job)


def batch_of(bad_job: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"jobs": [{"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}, bad_job], **fields}


BAD_BATCHES: list[tuple[str, Any, str]] = [
    ("lone surrogate in a job's metadata", batch_of({"prompt": "a", "metadata": {"k": "\udfff"}}),
     "jobs[3].metadata.k: contains a lone surrogate (\\udfff), which cannot be stored"),
    ("NUL in a job's prompt", batch_of({"prompt": "\u0000"}), "jobs[3].prompt: contains a NUL character"),
    ("NUL in a job's idempotency_key", batch_of({"prompt": "a", "idempotency_key": "\u0000"}),
     "jobs[3].idempotency_key: contains a NUL character"),
    ("NUL in the batch name", batch_of({"prompt": "a"}, name="eval\u0000"), "name: contains a NUL character"),
    ("lone surrogate in the batch name", batch_of({"prompt": "a"}, name="\udfff"), "name: contains a lone surrogate"),
    ("NUL in the batch idempotency_key", batch_of({"prompt": "a"}, idempotency_key="\u0000"),
     "idempotency_key: contains a NUL character"),
    ("NaN alpha", batch_of({"prompt": "a"}, alpha=float("nan")), "alpha: Input should be a finite number"),
    ("1e999 batch max_cost_usd", b'{"jobs": [{"prompt": "a"}], "max_cost_usd": 1e999}',
     "max_cost_usd: Input should be a finite number"),
    ("Infinity batch max_pending_s", batch_of({"prompt": "a"}, max_pending_s=float("inf")),
     "max_pending_s: Input should be a finite number"),
    ("NaN in a job's metadata", batch_of({"prompt": "a", "metadata": {"x": [float("nan")]}}),
     "jobs[3].metadata.x[0]: is not a finite number"),
]


@pytest.mark.parametrize(("case", "body", "words"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_unstorable_batch_is_a_422_naming_the_field(api: TestClient, pg_db: Database, existing_job: str,
                                                    case: str, body: Any, words: str) -> None:
    assert_error(send(api, "/v1/batches", body), 422, words)
    assert_untouched(api, pg_db, existing_job)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("cursor", [
    cursor_of("2026-01-01T00:00:00|3f1c"),                 # no zone: was a 500
    cursor_of("0001-01-01T00:00:00+05:00|3f1c"),           # no UTC time
    cursor_of("2026-01-01T00:00:00+00:00|a\u0000b"),       # an id the database cannot hold
    cursor_of("yesterday|3f1c"), "!!!",
], ids=["naive time", "out of range", "NUL id", "not a time", "not base64"])
def test_a_bad_cursor_is_a_422(api: TestClient, pg_db: Database, existing_job: str, cursor: str) -> None:
    response = api.get("/v1/jobs", params={"cursor": cursor})
    assert_error(response, 422, "malformed cursor; pass back the next_cursor")
    assert_untouched(api, pg_db, existing_job)


@pytest.mark.parametrize(("method", "path", "params", "words"), [
    ("GET", "/v1/jobs/a%00b", None, "path.job_id: contains a NUL character"),
    ("POST", "/v1/jobs/a%00b/cancel", None, "path.job_id: contains a NUL character"),
    ("GET", "/v1/batches/%00", None, "path.batch_id: contains a NUL character"),
    ("GET", "/v1/jobs", {"batch_id": "\u0000"}, "query.batch_id: contains a NUL character"),
    ("GET", "/v1/jobs", {"model": "m\u0000"}, "query.model: contains a NUL character"),
], ids=["job id", "cancel id", "batch id", "batch_id filter", "model filter"])
def test_unstorable_path_and_query_text_is_a_422(api: TestClient, pg_db: Database, existing_job: str, method: str,
                                                 path: str, params: dict[str, str] | None, words: str) -> None:
    assert_error(api.request(method, path, params=params), 422, words)
    assert_untouched(api, pg_db, existing_job)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "words"), [
    ("GET", "/v1/nope", None, {}, 404, "no such endpoint: GET /v1/nope"),
    ("DELETE", "/v1/jobs", None, {}, 405, "DELETE /v1/jobs is not allowed; this endpoint accepts GET, POST"),
    ("POST", "/v1/jobs", b'{"prompt": "caf\xe9"}', {"content-type": "application/json"}, 400,
     "malformed JSON body"),                                             # Latin-1, not UTF-8
    ("POST", "/v1/jobs", b'{"prompt": "a",', {"content-type": "application/json"}, 400,
     "malformed JSON body: Expecting property name"),
    ("POST", "/v1/jobs", b'{"prompt": "a"}', {"content-type": "text/plain"}, 415,
     "send the body as JSON with content-type: application/json (got text/plain)"),
    ("POST", "/v1/batches", b'{"jobs": []}', {}, 415, "(got no content-type)"),
    ("POST", "/v1/jobs", b'["a"]', {"content-type": "application/json"}, 422,
     "body: Input should be a valid dictionary"),
    ("POST", "/v1/jobs", b"", {"content-type": "application/json"}, 422, "body: Field required"),
    ("POST", "/v1/jobs", b'{"prompt": "a", "messages": null}', {"content-type": "application/problem+json"}, 201, ""),
], ids=["unknown route", "wrong method", "not UTF-8", "truncated JSON", "text/plain", "no content type",
        "not an object", "empty body", "+json is JSON"])
def test_every_http_error_has_the_one_shape(api: TestClient, pg_db: Database, method: str, path: str,
                                            body: bytes | None, headers: dict[str, str], status: int,
                                            words: str) -> None:
    response = api.request(method, path, content=body, headers=headers)
    if status < 400:
        assert response.status_code == status, response.text
        return
    assert_error(response, status, words)
    if status == 405:
        assert response.headers["allow"] == "GET, POST"
    assert counts(pg_db) == (0, 0)


def test_an_unexpected_error_is_a_500_in_the_one_shape(pg_db: Database, fleet: Fleet,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(JobStore, "list_jobs", broken)
    app = create_app(make_settings(pg_db.url), pg_db, fleet)
    with TestClient(app, raise_server_exceptions=False, headers=bearer(create_api_key(pg_db))) as client:
        response = client.get("/v1/jobs")
    body = assert_error(response, 500, "internal error (RuntimeError)")
    assert "boom" not in body["error"]["message"]


@pytest.mark.parametrize("score", [False, True, "1", None, 2, -0.1, float("nan"), float("inf"), [1]],
                         ids=["false", "true", "string", "null", "above 1", "below 0", "NaN", "Infinity", "list"])
def test_feedback_takes_only_a_number_in_0_1(api: TestClient, pg_db: Database, existing_job: str,
                                             score: Any) -> None:
    _succeed(pg_db, existing_job)
    response = send(api, f"/v1/jobs/{existing_job}/feedback", {"score": score})
    assert_error(response, 422, "score: ")
    assert api.get(f"/v1/jobs/{existing_job}").json()["score"] is None
    assert_untouched(api, pg_db, existing_job)


@pytest.mark.parametrize("score", [0, 1, 0.5], ids=["int 0", "int 1", "float"])
def test_feedback_accepts_json_numbers(api: TestClient, pg_db: Database, existing_job: str, score: float) -> None:
    _succeed(pg_db, existing_job)
    response = send(api, f"/v1/jobs/{existing_job}/feedback", {"score": score})
    assert response.status_code == 200, response.text
    assert response.json()["score"] == score


def _succeed(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED))


def test_openapi_states_the_error_shape_and_the_one_of_prompt_rule(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    job_spec = schema["components"]["schemas"]["JobSpec"]
    assert [branch["required"] for branch in job_spec["oneOf"]] == [["prompt"], ["messages"]]
    assert "max_pending_s" in job_spec["properties"]
    batch_create = schema["components"]["schemas"]["BatchCreateRequest"]["properties"]
    assert {"max_pending_s", "jobs", "input_file_id"} <= set(batch_create)
    assert {"expires_at", "notes"} <= set(schema["components"]["schemas"]["JobOut"]["properties"])
    submit = schema["paths"]["/v1/jobs"]["post"]["responses"]
    for status in ("400", "415", "422"):
        assert submit[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
