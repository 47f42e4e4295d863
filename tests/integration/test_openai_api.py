"""OpenAI's Files, Batches, chat/text completions and models paths, driven by the official
``openai`` client against a real API server (uvicorn in a thread) on a real Postgres.

No worker runs here: tests play the worker's part by writing job outcomes directly, and run the
scheduler's batch step (``advance_batches``) themselves. tests/e2e/test_openai_client.py runs
the same client against real llama.cpp workers.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from sqlalchemy import func, select, update

from scheduler.api.app import create_app
from scheduler.batch_lifecycle import BATCHES_PER_STEP, advance_batches
from scheduler.fleet import Fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.storage import Database, JobStatus, JobStore, utcnow
from scheduler.storage.batches import BatchStore
from scheduler.storage.tables import Batch, Job, StoredFile
from tests.conftest import create_api_key, free_port, make_settings

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Small limits, so that the tests reach them: an upload may exceed the JSON body limit.
LIMITS: dict[str, Any] = {"max_body_bytes": 2048, "max_file_bytes": 8192, "max_batch_file_requests": 20,
                          "interactive_timeout_s": 20.0}


@pytest.fixture
def serve(pg_db: Database, fleet: Fleet) -> Iterator[Callable[..., str]]:
    """Start an API server with settings overrides; returns its base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: Any) -> str:
        settings = make_settings(pg_db.url, **(LIMITS | overrides))
        server = uvicorn.Server(uvicorn.Config(create_app(settings, pg_db, fleet), host="127.0.0.1",
                                               port=free_port(), log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        running.append((server, thread))
        return f"http://127.0.0.1:{server.config.port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def api_url(serve: Callable[..., str]) -> str:
    return serve()


@pytest.fixture
def tenant(pg_db: Database, api_url: str) -> openai.OpenAI:
    return client_of(pg_db, api_url, "team-a")


def client_of(db: Database, api_url: str, tenant: str, *, admin: bool = False,
              max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url + "/v1", api_key=create_api_key(db, tenant, admin=admin),
                         max_retries=max_retries)


# -- helpers ----------------------------------------------------------------------------------
def line(custom_id: str, body: dict[str, Any], *, url: str = CHAT, method: str = "POST") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": method, "url": url, "body": body}


def chat(content: str, model: str = "auto", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 16, **fields}


def upload(client: openai.OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    text = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    return client.files.create(file=(name, io.BytesIO(text.encode())), purpose="batch").id


def create_batch(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT, **fields: Any) -> Any:
    return client.batches.create(input_file_id=upload(client, lines),
                                 endpoint=endpoint, completion_window="24h", **fields)  # type: ignore[arg-type]


def batch_jobs(db: Database, batch_id: str) -> list[Job]:
    with db.session() as session:
        return list(session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.created_at)))


def set_job(db: Database, job_id: str, status: JobStatus, **values: Any) -> None:
    """Play a worker (or the tick): move a job to ``status``."""
    final = {"finished_at": utcnow()} if status.is_final else {}
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, updated_at=utcnow(),
                                                                     **final | values))


def answer(db: Database, job_id: str, text: str, model: str = "gemma-3-270m",
           reason: str | None = None) -> None:
    set_job(db, job_id, JobStatus.SUCCEEDED, result_text=text, finish_reason="stop", assigned_model=model,
            input_tokens=11, output_tokens=3, cost_usd=0.000002, latency_s=0.4, attempts=1,
            assignment_reason=reason or f"cheapest plan: {model}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(text) for text in client.files.content(file_id).text.splitlines()]


def count(db: Database, table: Any, *where: Any) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where)) or 0


# -- files ------------------------------------------------------------------------------------
def test_files_round_trip_and_limits(tenant: openai.OpenAI, pg_db: Database) -> None:
    content = b'{"custom_id": "a"}\n' * 250     # 4750 bytes: above the JSON body limit, within the file's
    created = tenant.files.create(file=("mine.jsonl", io.BytesIO(content)), purpose="batch")
    assert (created.object, created.bytes, created.filename, created.purpose, created.status) == (
        "file", len(content), "mine.jsonl", "batch", "processed")
    assert tenant.files.retrieve(created.id).model_dump() == created.model_dump()
    assert tenant.files.content(created.id).content == content
    assert [f.id for f in tenant.files.list()] == [created.id]

    deleted = tenant.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as gone:
        tenant.files.retrieve(created.id)
    assert created.id in str(gone.value)     # the client shows our message (OpenAI's error shape)
    with pytest.raises(openai.NotFoundError):
        tenant.files.delete(created.id)

    with pytest.raises(openai.APIStatusError) as too_big:
        tenant.files.create(file=("big.jsonl", io.BytesIO(b"x" * 8193)), purpose="batch")
    assert too_big.value.status_code == 413 and "max_file_bytes" in str(too_big.value.body)
    with pytest.raises(openai.APIStatusError) as far_too_big:   # stopped by the body limit, before it is read
        tenant.files.create(file=("huge.jsonl", io.BytesIO(b"x" * 200_000)), purpose="batch")
    assert far_too_big.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError) as wrong_purpose:
        tenant.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="assistants")
    assert "purpose" in str(wrong_purpose.value.body)
    assert count(pg_db, StoredFile) == 0


def test_files_list_in_pages(tenant: openai.OpenAI) -> None:
    ids = [upload(tenant, [line(f"r{i}", chat("hi"))], name=f"f{i}.jsonl") for i in range(5)]
    first = tenant.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in tenant.files.list(limit=2)] == ids[::-1]      # the client follows `after`
    assert [f.id for f in tenant.files.list(order="asc")] == ids
    assert list(tenant.files.list(purpose="batch_output")) == []
    with pytest.raises(openai.UnprocessableEntityError):
        tenant.files.list(after="file-nope")


# -- batches from a file ----------------------------------------------------------------------
def test_a_batch_from_a_file_runs_its_lines_and_writes_openai_output(tenant: openai.OpenAI,
                                                                      pg_db: Database) -> None:
    batch = create_batch(tenant, [
        line("q-auto", chat("What is 2+2?", switchyard={"min_quality": 0.2})),
        line("q-pinned", chat("Capital of France?", model="gemma-3-270m", temperature=0.5, stop="\n", seed=7,
                              user="someone", metadata={"k": "v"})),
        line("q-among", chat("Name a colour.", switchyard={"allowed_models": ["smollm2-135m"]})),
    ], metadata={"switchyard_alpha": "0.3", "switchyard_max_cost_usd": "0.5", "team": "eval"})
    assert (batch.object, batch.status, batch.endpoint, batch.completion_window) == (
        "batch", "in_progress", CHAT, "24h")
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert batch.expires_at == batch.created_at + 24 * 3600 and batch.in_progress_at == batch.created_at
    extra = batch.model_extra or {}
    assert (extra["alpha"], extra["max_cost_usd"], extra["counts"], extra["done"]) == (
        0.3, 0.5, {"pending": 3}, False)
    assert batch.metadata == {"switchyard_alpha": "0.3", "switchyard_max_cost_usd": "0.5", "team": "eval"}

    jobs = batch_jobs(pg_db, batch.id)
    assert [j.custom_id for j in jobs] == ["q-auto", "q-pinned", "q-among"]
    assert [j.allowed_models for j in jobs] == [None, ["gemma-3-270m"], ["smollm2-135m"]]
    assert [j.min_quality for j in jobs] == [0.2, None, None]
    assert (jobs[1].temperature, jobs[1].stop, jobs[1].metadata_, jobs[0].temperature, jobs[0].max_tokens) == (
        0.5, ["\n"], {"k": "v"}, 0.0, 16)
    for job in jobs:   # the completion window is each job's deadline and its longest wait
        assert int(job.deadline_at.timestamp()) == batch.expires_at == int(job.expires_at.timestamp())
        assert job.owner == "team-a" and job.on_deadline_miss == "run_late"

    answer(pg_db, jobs[0].id, "4", model="smollm2-135m")
    answer(pg_db, jobs[1].id, "Paris.")
    assert advance_batches(pg_db, utcnow()).finished == []                # one job still pending
    set_job(pg_db, jobs[2].id, JobStatus.FAILED, attempts=3, error="BackendError: the model crashed")
    progress = advance_batches(pg_db, utcnow())
    assert progress.finalizing == [batch.id] and [b for b, _ in progress.finished] == [batch.id]

    done = tenant.batches.retrieve(batch.id)
    assert done.status == "completed" and done.finalizing_at and done.completed_at
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (22, 6)
    output = jsonl(tenant, done.output_file_id)
    assert [o["custom_id"] for o in output] == ["q-auto", "q-pinned"]
    assert output[1] == {
        "id": f"batch_req_{jobs[1].id}", "custom_id": "q-pinned", "error": None,
        "response": {"status_code": 200, "request_id": jobs[1].id, "body": {
            "id": f"chatcmpl-{jobs[1].id}", "object": "chat.completion",
            "created": output[1]["response"]["body"]["created"],
            "model": "gemma-3-270m", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}}}
    assert output[0]["response"]["body"]["model"] == "smollm2-135m"
    [failed] = jsonl(tenant, done.error_file_id)
    assert failed["custom_id"] == "q-among" and failed["error"] is None
    assert failed["response"]["status_code"] == 502
    assert failed["response"]["body"]["error"] == {
        "message": "BackendError: the model crashed", "type": "server_error", "param": None, "code": "model_error"}
    outputs = tenant.files.list(purpose="batch_output")
    assert {f.id for f in outputs} == {done.output_file_id, done.error_file_id}

    assert advance_batches(pg_db, utcnow()).finished == []               # written once
    assert count(pg_db, StoredFile, StoredFile.purpose == "batch_output") == 2


def test_a_completions_batch_answers_text_completions(tenant: openai.OpenAI, pg_db: Database) -> None:
    request = {"model": "auto", "prompt": ["2+2="], "max_tokens": 4}
    batch = create_batch(tenant, [line("p", request, url=COMPLETIONS)], endpoint=COMPLETIONS)
    [job] = batch_jobs(pg_db, batch.id)
    assert (job.prompt, job.messages) == ("2+2=", None)
    answer(pg_db, job.id, " 4")
    advance_batches(pg_db, utcnow())
    [out] = jsonl(tenant, tenant.batches.retrieve(batch.id).output_file_id)
    body = out["response"]["body"]
    assert (body["object"], body["id"], body["choices"][0]["text"]) == (
        "text_completion", f"cmpl-{job.id}", " 4")


BAD_LINES: list[tuple[Any, str, str | None]] = [
    ('{"custom_id": "broken", ', "invalid_json_line", None),
    (line("dup", chat("a")), "", None),                               # fine: the first of two
    (line("dup", chat("b")), "duplicate_custom_id", "custom_id"),
    (line("get", chat("a"), method="GET"), "invalid_method", "method"),
    (line("url", chat("a"), url=COMPLETIONS), "invalid_url", "url"),
    (line("model", chat("a", model="gpt-9")), "model_not_found", "body.model"),
    (line("n", chat("a", n=2)), "unsupported_parameter", "body.n"),
    (line("tools", chat("a", tools=[{"type": "function", "function": {"name": "f"}}])),
     "unsupported_parameter", "body.tools"),
    (line("stream", chat("a", stream=True)), "unsupported_parameter", "body.stream"),
    (line("typo", chat("a", temprature=1)), "unknown_parameter", "body.temprature"),
    (line("empty", chat("")), "invalid_request", "body.messages.0.content"),
    (line("floor", chat("a", switchyard={"min_quality": 2})), "invalid_request",
     "body.switchyard.min_quality"),
    ({"method": "POST", "url": CHAT, "body": chat("a")}, "invalid_custom_id", "custom_id"),
    ([1, 2], "invalid_json_line", None),
    (line("nobody", chat("a")) | {"body": "hi"}, "invalid_request", "body"),
    (line("huge", chat("a", max_tokens=10**6)), "invalid_request", None),
]


def test_a_bad_input_file_fails_the_batch_with_an_error_per_line(tenant: openai.OpenAI,
                                                                  pg_db: Database) -> None:
    batch = create_batch(tenant, [text for text, _, _ in BAD_LINES])
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.errors is not None and batch.errors.object == "list"
    expected = [(number, code, param) for number, (_, code, param) in enumerate(BAD_LINES, start=1) if code]
    assert [(e.line, e.code, e.param) for e in batch.errors.data or []] == expected
    assert all(e.message for e in batch.errors.data or [])
    assert count(pg_db, Job) == 0
    assert tenant.batches.retrieve(batch.id).status == "failed"
    advance_batches(pg_db, utcnow())
    assert tenant.batches.retrieve(batch.id).status == "failed"


def test_empty_and_oversized_input_files(tenant: openai.OpenAI) -> None:
    empty = create_batch(tenant, ["", "  "])
    assert empty.errors is not None and many_errors(empty) == [("empty_file", None)]
    many = create_batch(tenant, [line(f"r{i}", chat("q")) for i in range(21)])   # max_batch_file_requests: 20
    assert many_errors(many) == [("too_many_requests", 21)]


def many_errors(batch: Any) -> list[tuple[str | None, int | None]]:
    return [(error.code, error.line) for error in batch.errors.data or []]


def test_creating_a_batch_refuses_what_it_cannot_do(tenant: openai.OpenAI, api_url: str,
                                                    pg_db: Database) -> None:
    file_id = upload(tenant, [line("a", chat("hi"))])
    with pytest.raises(openai.NotFoundError):
        tenant.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/embeddings"}, "endpoint must be one of"),
        ({"completion_window": "1h"}, "completion_window must be one of"),
        ({"metadata": {"switchyard_alpha": "high"}}, "metadata.switchyard_alpha"),
        ({"metadata": {"switchyard_alpha": "1.5"}}, "between 0 and 1"),
        ({"metadata": {"switchyard_aplha": "0.5"}}, "unknown Switchyard key"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata holds 17 keys"),
        ({"alpha": 0.5}, "switchyard_alpha"),
        ({"jobs": [{"prompt": "x"}]}, "not both"),
    ]
    key = tenant.api_key
    for change, words in refusals:
        body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"} | change
        response = httpx.post(api_url + "/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 422 and words in response.json()["error"]["message"], (change, response.text)
    mixed = httpx.post(api_url + "/v1/batches", json={"jobs": [{"prompt": "x"}], "endpoint": CHAT},
                       headers={"Authorization": f"Bearer {key}"})
    assert mixed.status_code == 422 and "endpoint" in mixed.json()["error"]["message"]
    neither = httpx.post(api_url + "/v1/batches", json={}, headers={"Authorization": f"Bearer {key}"})
    assert neither.status_code == 422 and "give input_file_id" in neither.json()["error"]["message"]
    output = create_batch(tenant, [line("a", chat("hi"))])
    [job] = batch_jobs(pg_db, output.id)
    answer(pg_db, job.id, "hello")
    advance_batches(pg_db, utcnow())
    output_file = tenant.batches.retrieve(output.id).output_file_id
    with pytest.raises(openai.UnprocessableEntityError):   # a batch reads input files, not output files
        tenant.batches.create(input_file_id=output_file or "", endpoint=CHAT, completion_window="24h")
    assert count(pg_db, Batch) == 1


def test_batches_list_in_pages(tenant: openai.OpenAI, api_url: str) -> None:
    created = [create_batch(tenant, [line("a", chat(f"q{i}"))]).id for i in range(3)]
    inline = httpx.post(api_url + "/v1/batches", json={"name": "native", "jobs": [{"prompt": "x"}]},
                        headers={"Authorization": f"Bearer {tenant.api_key}"}).json()
    newest_first = [inline["id"], *created[::-1]]
    page = tenant.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    assert [b.id for b in tenant.batches.list(limit=2)] == newest_first
    assert [b.id for b in tenant.batches.list(after=created[1])] == created[:1]
    with pytest.raises(openai.UnprocessableEntityError):
        tenant.batches.list(after="nope")


def test_an_inline_batch_is_the_same_object_and_ends_the_same_way(tenant: openai.OpenAI, api_url: str,
                                                                   pg_db: Database) -> None:
    created = httpx.post(api_url + "/v1/batches", json={"name": "native", "alpha": 0.4, "jobs": [
        {"prompt": "2+2?"}, {"messages": [{"role": "user", "content": "hi"}]}]},
        headers={"Authorization": f"Bearer {tenant.api_key}"})
    assert created.status_code == 201
    body = created.json()
    assert (body["object"], body["status"], body["endpoint"], body["input_file_id"], body["name"]) == (
        "batch", "in_progress", None, None, "native")
    first, second = body["job_ids"]
    answer(pg_db, first, "4")
    set_job(pg_db, second, JobStatus.CANCELLED)
    advance_batches(pg_db, utcnow())
    done = tenant.batches.retrieve(body["id"])
    assert done.status == "completed" and (done.model_extra or {})["job_ids"] is None
    [out] = jsonl(tenant, done.output_file_id)
    assert out["custom_id"] == first and out["response"]["body"]["object"] == "text_completion"
    [err] = jsonl(tenant, done.error_file_id)
    assert (err["custom_id"], err["response"], err["error"]["code"]) == (second, None, "batch_cancelled")


# -- cancel and expiry ------------------------------------------------------------------------
def test_cancel_ends_waiting_jobs_now_and_the_batch_when_running_ones_end(tenant: openai.OpenAI,
                                                                          pg_db: Database) -> None:
    batch = create_batch(tenant, [line(f"r{i}", chat(f"q{i}")) for i in range(3)])
    running, queued, pending = batch_jobs(pg_db, batch.id)
    set_job(pg_db, running.id, JobStatus.RUNNING)
    set_job(pg_db, queued.id, JobStatus.QUEUED)

    cancelling = tenant.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert [j.status for j in batch_jobs(pg_db, batch.id)] == [JobStatus.RUNNING, JobStatus.CANCELLED,
                                                              JobStatus.CANCELLED]
    assert advance_batches(pg_db, utcnow()).finished == []         # its running job has not ended yet
    assert tenant.batches.cancel(batch.id).status == "cancelling"  # again: nothing changes

    answer(pg_db, running.id, "done anyway")
    advance_batches(pg_db, utcnow())
    cancelled = tenant.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert [o["custom_id"] for o in jsonl(tenant, cancelled.output_file_id)] == ["r0"]   # finished lines kept
    errors = jsonl(tenant, cancelled.error_file_id)
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("r1", None, "batch_cancelled"), ("r2", None, "batch_cancelled")]
    assert tenant.batches.cancel(batch.id).status == "cancelled"

    finished = create_batch(tenant, [line("x", chat("x"))])
    answer(pg_db, batch_jobs(pg_db, finished.id)[0].id, "x")
    advance_batches(pg_db, utcnow())
    with pytest.raises(openai.ConflictError) as refused:
        tenant.batches.cancel(finished.id)
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "completed" in str(refused.value.body)


def test_a_batch_past_its_window_expires_and_keeps_its_answers(tenant: openai.OpenAI,
                                                                pg_db: Database) -> None:
    batch = create_batch(tenant, [line(f"r{i}", chat(f"q{i}")) for i in range(4)])
    done, running, queued, pending = batch_jobs(pg_db, batch.id)
    answer(pg_db, done.id, "early")
    set_job(pg_db, running.id, JobStatus.RUNNING)
    set_job(pg_db, queued.id, JobStatus.QUEUED)
    with pg_db.session() as session:
        session.execute(update(Batch).where(Batch.id == batch.id)
                        .values(expires_at=utcnow() - dt.timedelta(seconds=1)))

    progress = advance_batches(pg_db, utcnow())
    assert progress.jobs_ended == 2 and progress.finished == []     # the running job may still finish
    assert [j.status for j in batch_jobs(pg_db, batch.id)] == [JobStatus.SUCCEEDED, JobStatus.RUNNING,
                                                              JobStatus.EXPIRED, JobStatus.EXPIRED]
    # A lost worker's lease sends its job back to pending: past the window, it expires too.
    set_job(pg_db, running.id, JobStatus.PENDING)
    advance_batches(pg_db, utcnow())
    expired = tenant.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert [o["custom_id"] for o in jsonl(tenant, expired.output_file_id)] == ["r0"]
    errors = jsonl(tenant, expired.error_file_id)
    assert [(e["custom_id"], e["response"], e["error"]["code"]) for e in errors] == [
        ("r1", None, "batch_expired"), ("r2", None, "batch_expired"), ("r3", None, "batch_expired")]
    assert "completion window" in errors[0]["error"]["message"]


def test_the_batch_step_is_bounded_and_safe_to_run_twice_at_once(tenant: openai.OpenAI,
                                                                  pg_db: Database) -> None:
    batches = [create_batch(tenant, [line("a", chat(f"q{i}")), line("b", chat("x"))]) for i in range(7)]
    for batch in batches:
        for job in batch_jobs(pg_db, batch.id):
            answer(pg_db, job.id, "ok")
    first = advance_batches(pg_db, utcnow())
    assert len(first.finished) == BATCHES_PER_STEP

    barrier = threading.Barrier(2)
    finished: list[str] = []

    def scheduler() -> None:
        barrier.wait()
        for _ in range(3):
            finished.extend(batch_id for batch_id, _ in advance_batches(pg_db, utcnow()).finished)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(finished + [b for b, _ in first.finished]) == sorted(b.id for b in batches)   # each once
    assert count(pg_db, StoredFile, StoredFile.purpose == "batch_output") == len(batches)
    assert {tenant.batches.retrieve(b.id).status for b in batches} == {"completed"}


# -- chat and text completions ----------------------------------------------------------------
class FakeWorker:
    """Answers (or fails) every pending job as soon as it appears, as the tick and a worker would."""

    def __init__(self, db: Database, outcome: Callable[[Job], None]) -> None:
        self.db, self.outcome = db, outcome
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeWorker:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.db.session() as session:
                waiting = list(session.scalars(select(Job).where(Job.status == JobStatus.PENDING)))
            for job in waiting:
                self.outcome(job)
            time.sleep(0.05)


def test_chat_completion_waits_for_its_job_and_answers_in_openai_shape(tenant: openai.OpenAI,
                                                                       pg_db: Database) -> None:
    reason = "cheapest plan meeting no floor within capacity: gemma-3-270m p=0.40 — smollm2-135m 0.5x cost"
    with FakeWorker(pg_db, lambda job: answer(pg_db, job.id, "Paris.", reason=reason)):
        started = utcnow()
        raw = tenant.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}])
        completion = raw.parse()
        text = tenant.completions.create(model="smollm2-135m", prompt="The capital is", max_tokens=8)
    assert completion.object == "chat.completion" and completion.choices[0].message.content == "Paris."
    assert completion.model == "gemma-3-270m" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 14
    job_id = raw.headers["x-switchyard-job-id"]
    assert completion.id == f"chatcmpl-{job_id}"
    assert raw.headers["x-switchyard-reason"] == reason.replace("—", "-")
    with pg_db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.owner == "team-a" and job.allowed_models is None
        assert job.on_deadline_miss == "run_late"
        assert 55 <= (job.deadline_at - started).total_seconds() <= 65        # interactive_deadline_s: urgent
    assert text.object == "text_completion" and text.choices[0].text == "Paris."
    with pg_db.session() as session:
        pinned = session.get(Job, text.id.removeprefix("cmpl-"))
        assert pinned is not None and pinned.allowed_models == ["smollm2-135m"] and pinned.max_tokens == 8


def test_completion_errors_are_clear_and_not_retried(serve: Callable[..., str], tenant: openai.OpenAI,
                                                     pg_db: Database, api_url: str) -> None:
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        tenant.chat.completions.create(model="gpt-9", messages=ask)  # type: ignore[arg-type]
    assert "auto" in str(unknown.value.body)
    with pytest.raises(openai.BadRequestError) as streaming:
        tenant.chat.completions.create(model="auto", messages=ask, stream=True)  # type: ignore[arg-type]
    assert "stream" in str(streaming.value.body)
    for fields in ({"n": 2}, {"top_p": 0.5}, {"logprobs": True},
                   {"response_format": {"type": "json_object"}}):
        with pytest.raises(openai.UnprocessableEntityError) as unsupported:
            tenant.chat.completions.create(model="auto", messages=ask, **fields)  # type: ignore[arg-type]
        assert next(iter(fields)) in str(unsupported.value.body)
    assert count(pg_db, Job) == 0

    # A job that fails answers its error once: the client, which retries 5xx by default, is told not to.
    retrying = openai.OpenAI(base_url=api_url + "/v1", api_key=tenant.api_key, max_retries=2)
    with FakeWorker(pg_db, lambda job: set_job(pg_db, job.id, JobStatus.FAILED, attempts=3,
                                               error="BackendError: out of memory")):
        with pytest.raises(openai.InternalServerError) as failed:
            retrying.chat.completions.create(model="auto", messages=ask)  # type: ignore[arg-type]
    assert failed.value.status_code == 502 and "out of memory" in str(failed.value.body)
    assert count(pg_db, Job) == 1

    impatient = openai.OpenAI(base_url=serve(interactive_timeout_s=0.3) + "/v1", api_key=tenant.api_key,
                              max_retries=2)
    with pytest.raises(openai.APIStatusError) as timed_out:
        impatient.chat.completions.create(model="auto", messages=ask)  # type: ignore[arg-type]
    job_id = timed_out.value.response.headers["x-switchyard-job-id"]
    assert timed_out.value.status_code == 504 and f"GET /v1/jobs/{job_id}" in str(timed_out.value.body)
    assert count(pg_db, Job) == 2       # not resubmitted; the job still waits for a tick


def test_models_list_the_fleet_and_auto(tenant: openai.OpenAI) -> None:
    models = tenant.models.list()
    assert [m.id for m in models] == ["auto", "smollm2-135m", "gemma-3-270m"]
    assert {m.object for m in models} == {"model"} and all(m.created > 0 for m in models)
    assert (tenant.models.retrieve("gemma-3-270m").model_extra or {})["backend"] == "llama_cpp"
    with pytest.raises(openai.NotFoundError):
        tenant.models.retrieve("gpt-9")


# -- tenants ----------------------------------------------------------------------------------
def test_another_tenant_gets_404_for_files_batches_and_jobs(tenant: openai.OpenAI, pg_db: Database,
                                                            api_url: str) -> None:
    batch = create_batch(tenant, [line("a", chat("mine"))])
    file_id = batch.input_file_id
    [job] = batch_jobs(pg_db, batch.id)
    other = client_of(pg_db, api_url, "team-b")
    for attempt in (lambda: other.files.retrieve(file_id), lambda: other.files.content(file_id),
                    lambda: other.files.delete(file_id), lambda: other.batches.retrieve(batch.id),
                    lambda: other.batches.cancel(batch.id),
                    lambda: other.batches.create(input_file_id=file_id, endpoint=CHAT,
                                                 completion_window="24h"),
                    lambda: other.get(f"/jobs/{job.id}", cast_to=httpx.Response)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert list(other.files.list()) == [] and list(other.batches.list()) == []
    assert tenant.batches.retrieve(batch.id).status == "in_progress"

    admin = client_of(pg_db, api_url, "ops", admin=True)
    assert admin.batches.retrieve(batch.id).id == batch.id and admin.files.retrieve(file_id).id == file_id
    for path in ("/v1/files", "/v1/batches", "/v1/models"):
        assert httpx.get(api_url + path).status_code == 401


def test_the_batch_step_on_sqlite_as_the_embedded_stack_runs_it(sqlite_url: str, fleet: Fleet) -> None:
    """`switchyard up` and the demo keep their jobs in SQLite: the same step, the same outcome."""
    db = Database(sqlite_url)
    try:
        now = utcnow()
        store, batches = JobStore(db), BatchStore(db)
        finished, _, _ = store.submit_batch("t", BatchSpec(jobs=[JobSpec(prompt="a"), JobSpec(prompt="b")]),
                                            now)
        cancelled, _, _ = store.submit_batch("t", BatchSpec(jobs=[JobSpec(prompt="c")]), now)
        first, second = batch_jobs(db, finished.id)
        answer(db, first.id, "A")
        set_job(db, second.id, JobStatus.FAILED, attempts=1, error="PromptTooLong: too long")
        assert batches.cancel("t", cancelled.id, utcnow()).batch.status == "cancelling"
        progress = advance_batches(db, utcnow())
        assert sorted(status.value for _, status in progress.finished) == ["cancelled", "completed"]
        summary = batches.get("t", finished.id)
        assert (summary.batch.status, summary.done) == ("completed", True)
        with db.session() as session:
            error_file = session.get(StoredFile, summary.batch.error_file_id)
            assert error_file is not None
            [failed] = [json.loads(text) for text in error_file.content.decode().splitlines()]
        assert failed["response"]["status_code"] == 422
        assert failed["response"]["body"]["error"]["code"] == "context_length_exceeded"
    finally:
        db.dispose()
