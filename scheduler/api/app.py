"""The REST API: submit, read, list and cancel jobs; list models and workers; health.

The API only writes jobs to the store; it never publishes to Celery (only the tick dispatches).
Every bad input is a 4xx with a message saying what to fix; a database outage is a 503.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from scheduler.api.errors import install_error_handlers
from scheduler.api.limits import BodySizeLimit
from scheduler.api.schemas import (
    BatchCreatedOut, BatchOut, ErrorOut, FeedbackIn, JobOut, JobPageOut, ModelOut, WorkerOut,
)
from scheduler.fleet import Fleet
from scheduler.jobspec import BatchSpec, JobSpec, StorableText
from scheduler.settings import Settings
from scheduler.storage import Database, FleetStore, HeartbeatStore, JobStatus, JobStore, utcnow
from scheduler.storage.jobs import BatchSummary

log = logging.getLogger(__name__)
OWNER_HEADER = "X-Switchyard-Owner"


def _owner(request: Request, x_switchyard_owner: Annotated[str | None, Header(
        max_length=128, pattern=r"^[A-Za-z0-9._@:-]+$",
        description="Tenant the request acts for (authentication comes later).")] = None) -> str:
    return x_switchyard_owner or request.app.state.settings.owner


async def _json_body(request: Request) -> None:
    """A body route reads JSON only: a body sent as another content type (or none) gets a 415
    that says so, instead of a 422 about the body not being an object."""
    content_type = request.headers.get("content-type")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    is_json = media_type == "application/json" or (media_type.startswith("application/")
                                                    and media_type.endswith("+json"))
    if not is_json and await request.body():  # no body at all: the 422 names the missing field
        raise HTTPException(415, f"send the body as JSON with content-type: application/json "
                                 f"(got {content_type or 'no content-type'})")


Owner = Annotated[str, Depends(_owner)]
JSON_BODY = [Depends(_json_body)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 404, 405, 409, 413, 415, 422, 503)}


def create_app(settings: Settings, db: Database, fleet: Fleet) -> FastAPI:
    jobs = JobStore(db, default_max_pending_s=settings.max_pending_s)
    heartbeats = HeartbeatStore(db)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(FleetStore(db).sync, fleet, utcnow())
        except Exception as exc:  # noqa: BLE001 - the API still serves; /readyz reports the database
            log.warning("could not record the fleet in the database at start-up: %s", exc)
        yield

    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan, responses=ERRORS,
                  description="Cost-optimal batch scheduling of LLM jobs across a fleet of models.")
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)

    app.state.settings = settings
    v1 = APIRouter(prefix="/v1")

    @v1.post("/jobs", response_model=JobOut, status_code=201, dependencies=JSON_BODY,
             summary="Submit one job (200 with the existing job on a repeated idempotency_key)")
    def submit_job(spec: JobSpec, who: Owner, response: Response) -> JobOut:
        now = utcnow()
        spec.check_against(settings, fleet, now)
        job, created = jobs.submit_job(who, spec, now)
        response.status_code = 201 if created else 200
        return JobOut.model_validate(job)

    @v1.post("/batches", response_model=BatchCreatedOut, status_code=201, dependencies=JSON_BODY,
             summary="Submit many jobs at once: all are written or none")
    def submit_batch(spec: BatchSpec, who: Owner, response: Response) -> BatchCreatedOut:
        now = utcnow()
        spec.check_against(settings, fleet, now)
        batch, batch_jobs, created = jobs.submit_batch(who, spec, now)
        response.status_code = 201 if created else 200
        return BatchCreatedOut(batch=_batch_out(jobs.get_batch(who, batch.id)), job_ids=[j.id for j in batch_jobs])

    @v1.get("/batches/{batch_id}", response_model=BatchOut)
    def get_batch(batch_id: StorableText, who: Owner) -> BatchOut:
        return _batch_out(jobs.get_batch(who, batch_id))

    @v1.get("/jobs/{job_id}", response_model=JobOut)
    def get_job(job_id: StorableText, who: Owner) -> JobOut:
        return JobOut.model_validate(jobs.get_job(who, job_id))

    @v1.get("/jobs", response_model=JobPageOut, summary="List jobs, newest first")
    def list_jobs(who: Owner, status: JobStatus | None = None, batch_id: StorableText | None = None,
                  model: StorableText | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                  cursor: StorableText | None = None) -> JobPageOut:
        page = jobs.list_jobs(who, status=status, batch_id=batch_id, model=model, limit=limit, cursor=cursor)
        return JobPageOut(jobs=[JobOut.model_validate(j) for j in page.jobs], next_cursor=page.next_cursor)

    @v1.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a pending or queued job")
    def cancel_job(job_id: StorableText, who: Owner) -> JobOut:
        return JobOut.model_validate(jobs.cancel_job(who, job_id, utcnow()))

    @v1.post("/jobs/{job_id}/feedback", response_model=JobOut, dependencies=JSON_BODY,
             summary="Score a succeeded job's answer (0..1); the predictor learns from it")
    def feedback(job_id: StorableText, body: FeedbackIn, who: Owner) -> JobOut:
        return JobOut.model_validate(jobs.record_feedback(who, job_id, body.score, utcnow()))

    @v1.get("/models", response_model=list[ModelOut])
    def list_models() -> list[ModelOut]:
        live = _live_workers_by_model(heartbeats, settings)
        return [ModelOut(name=s.name, backend=s.backend.value, prompt_format=s.prompt_format.value,
                         usd_per_mtok_input=s.usd_per_mtok_input, usd_per_mtok_output=s.usd_per_mtok_output,
                         usd_per_second=s.usd_per_second, capacity_jobs=s.capacity_jobs,
                         max_batch_jobs=s.max_batch_jobs, live_workers=live.get(s.name, 0))
                for s in fleet.models]

    @v1.get("/workers", response_model=list[WorkerOut], summary="Live workers and what they measured")
    def list_workers() -> list[WorkerOut]:
        return [WorkerOut.model_validate(w) for w in heartbeats.live(utcnow(), 3 * settings.heartbeat_interval_s)]

    app.include_router(v1)

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the database answers (503 otherwise)")
    def readyz() -> dict[str, str]:
        heartbeats.live(utcnow(), 0.0)  # a real query; StorageUnavailable -> 503
        return {"status": "ready"}

    return app


def _live_workers_by_model(heartbeats: HeartbeatStore, settings: Settings) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in heartbeats.live(utcnow(), 3 * settings.heartbeat_interval_s):
        counts[worker.model] = counts.get(worker.model, 0) + 1
    return counts


def _batch_out(summary: BatchSummary) -> BatchOut:
    batch = summary.batch
    finished = sum(n for status, n in summary.counts.items() if JobStatus(status).is_final)
    return BatchOut(id=batch.id, owner=batch.owner, name=batch.name, alpha=batch.alpha,
                    max_cost_usd=batch.max_cost_usd, num_jobs=batch.num_jobs,
                    idempotency_key=batch.idempotency_key, created_at=batch.created_at,
                    counts=summary.counts, cost_usd=summary.cost_usd, done=finished == batch.num_jobs)
