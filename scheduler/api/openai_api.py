"""OpenAI's paths, meaning what they mean in OpenAI's API, with Switchyard's extensions:

- ``/v1/files``: upload (multipart, purpose ``batch``), list, get, content, delete; in Postgres.
- ``/v1/batches``: create from an input file (OpenAI) or from inline ``jobs`` (Switchyard's
  extension; one body, discriminated by its fields), get, list, cancel. Every batch is one object:
  OpenAI's batch plus Switchyard's fields. The scheduler moves batches to their end
  (``scheduler/batch_lifecycle.py``).
- ``/v1/chat/completions`` and ``/v1/completions``: the request becomes an urgent job (deadline
  ``interactive_deadline_s`` away, so the next tick places it first) and the call waits for its
  answer, polling the job's status without holding a database connection in between.
- ``/v1/models``: the fleet and ``auto`` in OpenAI's list shape.

Errors keep Switchyard's one shape. Errors a retry cannot fix carry ``x-should-retry: false``,
which OpenAI's clients obey: a retried completion would submit the work a second time.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, params
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from scheduler.api.auth import CallerDep
from scheduler.api.errors import error_response
from scheduler.api.schemas import (
    BatchErrorsOut, BatchListOut, BatchOut, BatchRequestCountsOut, BatchUsageOut, FileDeletedOut, FileListOut,
    FileOut, ModelListOut, ModelOut,
)
from scheduler.errors import Conflict, InvalidRequest
from scheduler.fleet import Fleet
from scheduler.jobspec import StorableText, unstorable_reason
from scheduler.openai_compat.answers import ChatCompletion, TextCompletion, completion_of, failure_of
from scheduler.openai_compat.batch_input import BatchCreateRequest, batch_options, read_batch_input
from scheduler.openai_compat.bodies import (
    AUTO_MODEL, ChatCompletionRequest, CompletionRequest, ModelNotFound, job_spec_from_request,
)
from scheduler.settings import Settings
from scheduler.storage import Database, HeartbeatStore, JobStatus, JobStore, utcnow
from scheduler.storage.batches import BatchStore, BatchSummary
from scheduler.storage.files import FileInfo, FileStore
from scheduler.storage.jobs import FileBatch
from scheduler.storage.tables import Batch, Job

BATCH_PURPOSE = "batch"
MAX_FILENAME_CHARS = 255
# The multipart framing around an uploaded file (boundaries, part headers, the purpose field):
# the body limit of POST /v1/files is max_file_bytes plus this; the file itself is held to
# max_file_bytes exactly.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
UPLOAD_PATH = "/v1/files"
# A waiting completion polls its job's status, quickly at first (a tick may place it at once),
# then backing off to once a second.
FIRST_POLL_S, MAX_POLL_S, POLL_BACKOFF = 0.05, 1.0, 1.5
JOB_ID_HEADER, REASON_HEADER = "X-Switchyard-Job-Id", "X-Switchyard-Reason"
NO_RETRY = {"x-should-retry": "false"}
# Request counts: requests that ended without an answer.
UNANSWERED_STATUSES = (JobStatus.FAILED.value, JobStatus.EXPIRED.value, JobStatus.CANCELLED.value)


def openai_router(settings: Settings, db: Database, fleet: Fleet, jobs: JobStore,
                  json_body: list[params.Depends]) -> APIRouter:
    """``json_body``: the dependency that answers 415 to a JSON route sent another content type."""
    files = FileStore(db)
    batches = BatchStore(db)
    heartbeats = HeartbeatStore(db)
    fleet_loaded_at = int(time.time())
    router = APIRouter(prefix="/v1")

    # -- files ----------------------------------------------------------------------------
    @router.post("/files", response_model=FileOut, tags=["files"], summary=(
        f"Upload a batch input file (multipart; purpose={BATCH_PURPOSE}; at most max_file_bytes)"))
    def upload_file(caller: CallerDep,
                    file: Annotated[UploadFile, File(description="The JSONL file: one request per line.")],
                    purpose: Annotated[StorableText, Form(description=f"Only {BATCH_PURPOSE!r}.")]) -> Any:
        if purpose != BATCH_PURPOSE:
            raise InvalidRequest(f"purpose {purpose!r} is not supported: Switchyard stores batch input files "
                                 f"(purpose={BATCH_PURPOSE!r})")
        content = file.file.read(settings.max_file_bytes + 1)
        if len(content) > settings.max_file_bytes:
            message = (f"the file is larger than {settings.max_file_bytes} bytes (max_file_bytes); split the "
                       "requests into several files")
            return error_response(413, message, headers=NO_RETRY)
        filename = file.filename or "upload.jsonl"
        if (reason := unstorable_reason(filename)) is not None or len(filename) > MAX_FILENAME_CHARS:
            raise InvalidRequest(f"filename {reason or f'is longer than {MAX_FILENAME_CHARS} characters'}")
        return _file_out(files.create(caller.tenant, purpose, filename, content, utcnow()))

    @router.get("/files", response_model=FileListOut, tags=["files"], summary="List files, newest first")
    def list_files(caller: CallerDep, after: StorableText | None = None,
                   limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
                   order: Literal["asc", "desc"] = "desc",
                   purpose: StorableText | None = None) -> FileListOut:
        page = files.list_files(caller.scope, purpose=purpose, after=after, limit=limit, order=order)
        data = [_file_out(info) for info in page.files]
        return FileListOut(data=data, first_id=data[0].id if data else None,
                           last_id=data[-1].id if data else None, has_more=page.has_more)

    @router.get("/files/{file_id}", response_model=FileOut, tags=["files"])
    def get_file(file_id: StorableText, caller: CallerDep) -> FileOut:
        return _file_out(files.get(caller.scope, file_id))

    @router.get("/files/{file_id}/content", tags=["files"], response_class=Response,
                summary="The file's bytes (a batch's output: one JSON line per request)")
    def file_content(file_id: StorableText, caller: CallerDep) -> Response:
        _, content = files.content(caller.scope, file_id)
        return Response(content, media_type="application/octet-stream")

    @router.delete("/files/{file_id}", response_model=FileDeletedOut, tags=["files"])
    def delete_file(file_id: StorableText, caller: CallerDep) -> FileDeletedOut:
        files.delete(caller.scope, file_id)
        return FileDeletedOut(id=file_id, deleted=True)

    # -- batches --------------------------------------------------------------------------
    @router.post("/batches", response_model=BatchOut, dependencies=json_body, tags=["batches"], summary=(
        "Create a batch: from an uploaded input file (OpenAI), or from inline jobs (Switchyard; 201, or 200 "
        "with the existing batch on a repeated idempotency_key)"))
    def create_batch(body: BatchCreateRequest, caller: CallerDep, response: Response) -> BatchOut:
        now = utcnow()
        if body.jobs is not None:
            spec = body.inline_batch()
            spec.check_against(settings, fleet, now)
            batch, job_ids, created = jobs.submit_batch(caller.tenant, spec, now)
            response.status_code = 201 if created else 200
            # A new batch is answered as written (no read back); a repeated one as it is now.
            summary = BatchSummary.created(batch) if created else batches.get(caller.scope, batch.id)
            return _batch_out(summary, job_ids=job_ids)
        batch = create_file_batch(body, caller.tenant, caller.scope, now)
        return _batch_out(BatchSummary.created(batch))

    def create_file_batch(body: BatchCreateRequest, owner: str, scope: str | None, now: dt.datetime) -> Batch:
        """Validate the input file now (the batch passes ``validating`` within this request): a bad
        file makes a ``failed`` batch with one error per bad line, as OpenAI's does."""
        assert body.input_file_id and body.endpoint and body.completion_window   # BatchCreateRequest checked
        options = batch_options(body.metadata)
        info, content = files.content(scope, body.input_file_id)
        if info.purpose != BATCH_PURPOSE:
            raise InvalidRequest(f"file {info.id} has purpose {info.purpose!r}; a batch reads a file "
                                 f"uploaded with purpose={BATCH_PURPOSE!r}")
        request = FileBatch(input_file_id=info.id, endpoint=body.endpoint,
                            completion_window=body.completion_window, window_s=body.window_s(),
                            metadata=body.metadata, alpha=options.alpha, max_cost_usd=options.max_cost_usd)
        parsed = read_batch_input(content, body.endpoint, fleet=fleet, settings=settings, now=now,
                                  deadline=now + dt.timedelta(seconds=request.window_s),
                                  max_pending_s=request.window_s)
        if parsed.errors:
            errors = [error.as_openai() for error in parsed.errors]
            return jobs.record_failed_batch(owner, request, errors, now)
        return jobs.submit_file_batch(owner, request, [(r.custom_id, r.spec) for r in parsed.requests], now)

    @router.get("/batches", response_model=BatchListOut, tags=["batches"],
                summary="List batches, newest first")
    def list_batches(caller: CallerDep, after: StorableText | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> BatchListOut:
        page = batches.list_batches(caller.scope, after=after, limit=limit)
        data = [_batch_out(summary) for summary in page.batches]
        return BatchListOut(data=data, first_id=data[0].id if data else None,
                            last_id=data[-1].id if data else None, has_more=page.has_more)

    @router.get("/batches/{batch_id}", response_model=BatchOut, tags=["batches"])
    def get_batch(batch_id: StorableText, caller: CallerDep) -> BatchOut:
        return _batch_out(batches.get(caller.scope, batch_id))

    @router.post("/batches/{batch_id}/cancel", response_model=BatchOut, tags=["batches"], summary=(
        "Cancel a batch: its jobs not yet running are cancelled now; it ends cancelled once its running jobs "
        "end"))
    def cancel_batch(batch_id: StorableText, caller: CallerDep) -> Any:
        try:
            return _batch_out(batches.cancel(caller.scope, batch_id, utcnow()))
        except Conflict as exc:   # OpenAI's clients retry a 409 unless told not to
            return error_response(409, str(exc), headers=NO_RETRY)

    # -- completions ----------------------------------------------------------------------
    @router.post("/chat/completions", response_model=ChatCompletion, dependencies=json_body,
                 tags=["completions"], summary=(
                     "Answer a chat request (non-streaming); headers name the job and why its model was "
                     "chosen"))
    async def chat_completions(body: ChatCompletionRequest, caller: CallerDep, request: Request) -> Response:
        return await answer(body, caller.tenant, caller.scope, request)

    @router.post("/completions", response_model=TextCompletion, dependencies=json_body,
                 tags=["completions"], summary=(
                     "Complete a prompt (non-streaming); headers name the job and why its model was chosen"))
    async def completions(body: CompletionRequest, caller: CallerDep, request: Request) -> Response:
        return await answer(body, caller.tenant, caller.scope, request)

    async def answer(body: ChatCompletionRequest | CompletionRequest, owner: str, scope: str | None,
                     request: Request) -> Response:
        if body.stream:
            return error_response(400, "stream=true is not supported: Switchyard writes each answer whole; "
                                       "send stream=false (the default)", headers=NO_RETRY)
        now = utcnow()
        spec = job_spec_from_request(body, fleet=fleet, settings=settings, now=now,
                                     deadline=now + dt.timedelta(seconds=settings.interactive_deadline_s))
        job, _ = await run_in_threadpool(jobs.submit_job, owner, spec, now)
        final = await wait_until_final(job.id, scope, request)
        headers = {JOB_ID_HEADER: job.id}
        if final is None:
            status = (await run_in_threadpool(jobs.job_status, scope, job.id)).value
            return error_response(504, f"no answer within {settings.interactive_timeout_s:g} s "
                                       f"(interactive_timeout_s); job {job.id} is still {status}: poll "
                                       f"GET /v1/jobs/{job.id} for its answer", headers=headers | NO_RETRY)
        if final.assignment_reason:
            headers[REASON_HEADER] = _header_text(final.assignment_reason)
        if final.status != JobStatus.SUCCEEDED:
            failure = failure_of(final)
            message = f"job {final.id} {final.status.value}: {failure.message}"
            return error_response(failure.status_code, message, headers=headers | NO_RETRY)
        return JSONResponse(completion_of(final).model_dump(), headers=headers)

    async def wait_until_final(job_id: str, scope: str | None, request: Request) -> Job | None:
        """The job once final; None when ``interactive_timeout_s`` passed first, or the caller left."""
        give_up_at = time.monotonic() + settings.interactive_timeout_s
        delay = FIRST_POLL_S
        while True:
            if (await run_in_threadpool(jobs.job_status, scope, job_id)).is_final:
                return await run_in_threadpool(jobs.get_job, scope, job_id)
            left = give_up_at - time.monotonic()
            if left <= 0 or await request.is_disconnected():
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * POLL_BACKOFF, MAX_POLL_S)

    # -- models ---------------------------------------------------------------------------
    @router.get("/models", response_model=ModelListOut, tags=["models"],
                summary='The fleet\'s models, and "auto" (the scheduler chooses per request)')
    def list_models() -> ModelListOut:
        return ModelListOut(data=models())

    @router.get("/models/{model}", response_model=ModelOut, tags=["models"])
    def get_model(model: StorableText) -> ModelOut:
        found = next((out for out in models() if out.id == model), None)
        if found is None:
            raise ModelNotFound(f"the model {model!r} does not exist; the models are {AUTO_MODEL!r} and the "
                                f"fleet's: {', '.join(fleet.names)}")
        return found

    def models() -> list[ModelOut]:
        live: dict[str, int] = {}
        for worker in heartbeats.live(utcnow(), 3 * settings.heartbeat_interval_s):
            live[worker.model] = live.get(worker.model, 0) + 1
        auto = ModelOut(id=AUTO_MODEL, created=fleet_loaded_at, owned_by="switchyard", backend=None,
                        prompt_format=None, usd_per_mtok_input=None, usd_per_mtok_output=None,
                        usd_per_second=None, capacity_jobs=None, max_batch_jobs=None,
                        live_workers=sum(live.values()))
        return [auto, *(ModelOut(
            id=spec.name, created=fleet_loaded_at, owned_by="switchyard", backend=spec.backend.value,
            prompt_format=spec.prompt_format.value, usd_per_mtok_input=spec.usd_per_mtok_input,
            usd_per_mtok_output=spec.usd_per_mtok_output, usd_per_second=spec.usd_per_second,
            capacity_jobs=spec.capacity_jobs, max_batch_jobs=spec.max_batch_jobs,
            live_workers=live.get(spec.name, 0)) for spec in fleet.models)]

    return router


def _unix(moment: dt.datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _file_out(info: FileInfo) -> FileOut:
    return FileOut(id=info.id, bytes=info.bytes, created_at=int(info.created_at.timestamp()),
                   filename=info.filename, purpose=info.purpose, owner=info.owner)


def _batch_out(summary: BatchSummary, job_ids: list[str] | None = None) -> BatchOut:
    batch, counts = summary.batch, summary.counts
    return BatchOut(
        id=batch.id, endpoint=batch.endpoint,
        errors=None if batch.errors is None else BatchErrorsOut.model_validate({"data": batch.errors}),
        input_file_id=batch.input_file_id, completion_window=batch.completion_window, status=batch.status,
        output_file_id=batch.output_file_id, error_file_id=batch.error_file_id,
        created_at=int(batch.created_at.timestamp()), in_progress_at=_unix(batch.in_progress_at),
        expires_at=_unix(batch.expires_at), finalizing_at=_unix(batch.finalizing_at),
        completed_at=_unix(batch.completed_at), failed_at=_unix(batch.failed_at),
        expired_at=_unix(batch.expired_at), cancelling_at=_unix(batch.cancelling_at),
        cancelled_at=_unix(batch.cancelled_at),
        request_counts=BatchRequestCountsOut(
            total=batch.num_jobs, completed=counts.get(JobStatus.SUCCEEDED.value, 0),
            failed=sum(counts.get(status, 0) for status in UNANSWERED_STATUSES)),
        metadata=batch.metadata_,
        usage=BatchUsageOut(input_tokens=summary.input_tokens, output_tokens=summary.output_tokens,
                            total_tokens=summary.input_tokens + summary.output_tokens),
        owner=batch.owner, name=batch.name, alpha=batch.alpha, max_cost_usd=batch.max_cost_usd,
        num_jobs=batch.num_jobs, idempotency_key=batch.idempotency_key, counts=counts,
        cost_usd=summary.cost_usd, done=summary.done, job_ids=job_ids)


_HEADER_SUBSTITUTES = str.maketrans({"—": "-", "–": "-", "≥": ">=", "≤": "<="})


def _header_text(text: str) -> str:
    """``text`` as an HTTP header value: printable ASCII only (a header is Latin-1 on the wire,
    and a line break would end it)."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text.translate(_HEADER_SUBSTITUTES))
