"""The REST API: Switchyard's own paths (jobs, workers, health) here, and OpenAI's (files,
batches, chat and text completions, models) in ``scheduler.api.openai_api``.

The API only writes jobs to the store; it never publishes to Celery (only the tick dispatches).
Every bad input is a 4xx with a message saying what to fix; a database outage is a 503.
Everything under /v1 needs an API key (``scheduler.api.auth``); /healthz, /readyz, /metrics
(Prometheus: request counts and latencies, no tenant data), /docs and /openapi.json are open.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from scheduler.api.auth import Authenticator, CallerDep, current_caller
from scheduler.api.errors import install_error_handlers
from scheduler.api.limits import BodySizeLimit
from scheduler.api.openai_api import UPLOAD_OVERHEAD_BYTES, UPLOAD_PATH, openai_router
from scheduler.api.request_metrics import RequestMetrics
from scheduler.api.schemas import AttemptOut, ErrorOut, FeedbackIn, JobOut, JobPageOut, WorkerOut
from scheduler.fleet import Fleet
from scheduler.jobspec import JobSpec, StorableText
from scheduler.metrics import ApiMetrics, exposition, new_registry
from scheduler.settings import Settings
from scheduler.storage import Database, FleetStore, HeartbeatStore, JobStatus, JobStore, TenantStore, utcnow

log = logging.getLogger(__name__)


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


JSON_BODY = [Depends(_json_body)]
# Every router of tenant data is included with these: no route under it can be reached without a key.
AUTHENTICATED = [Depends(current_caller)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 402, 403, 404, 405, 409, 413, 415, 422, 429, 503)}


def create_app(settings: Settings, db: Database, fleet: Fleet) -> FastAPI:
    jobs = JobStore(db, default_max_pending_s=settings.max_pending_s)
    heartbeats = HeartbeatStore(db)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(FleetStore(db).sync, fleet, utcnow())
            if not await run_in_threadpool(TenantStore(db).has_active_keys):
                log.warning("no API key exists yet, so every /v1 request will answer 401: create one with "
                            "`switchyard keys create --tenant NAME [--admin]`")
        except Exception as exc:  # noqa: BLE001 - the API still serves; /readyz reports the database
            log.warning("could not read or record the fleet and keys at start-up: %s", exc)
        yield

    app = FastAPI(title="Switchyard", version="0.1.0", lifespan=lifespan, responses=ERRORS,
                  description="Cost-optimal batch scheduling of LLM jobs across a fleet of models.")
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes,
                       larger_limits={UPLOAD_PATH: settings.max_file_bytes + UPLOAD_OVERHEAD_BYTES})
    metrics = ApiMetrics(new_registry())
    app.add_middleware(RequestMetrics, metrics=metrics)   # outermost: counts the size limit's 413s too
    install_error_handlers(app)

    app.state.settings = settings
    app.state.authenticator = Authenticator(db, key_cache_s=settings.api_key_cache_s)
    v1 = APIRouter(prefix="/v1")

    @v1.post("/jobs", response_model=JobOut, status_code=201, dependencies=JSON_BODY,
             summary="Submit one job (200 with the existing job on a repeated idempotency_key)")
    def submit_job(spec: JobSpec, caller: CallerDep, response: Response) -> JobOut:
        now = utcnow()
        spec.check_against(settings, fleet, now)
        job, created = jobs.submit_job(caller.tenant, spec, now)
        response.status_code = 201 if created else 200
        return JobOut.model_validate(job)

    @v1.get("/jobs/{job_id}", response_model=JobOut,
            summary="A job: status, model, reason, the accepted answer, and every attempt")
    def get_job(job_id: StorableText, caller: CallerDep) -> JobOut:
        job, attempts = jobs.job_attempts(caller.scope, job_id)
        history = [AttemptOut.model_validate(a).model_copy(update={"accepted": a.attempt == job.accepted_attempt})
                   for a in attempts]
        return JobOut.model_validate(job).model_copy(update={"attempt_history": history})

    @v1.get("/jobs", response_model=JobPageOut, summary="List jobs, newest first")
    def list_jobs(caller: CallerDep, status: JobStatus | None = None, batch_id: StorableText | None = None,
                  model: StorableText | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                  cursor: StorableText | None = None) -> JobPageOut:
        page = jobs.list_jobs(caller.scope, status=status, batch_id=batch_id, model=model, limit=limit, cursor=cursor)
        return JobPageOut(jobs=[JobOut.model_validate(j) for j in page.jobs], next_cursor=page.next_cursor)

    @v1.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a pending or queued job")
    def cancel_job(job_id: StorableText, caller: CallerDep) -> JobOut:
        return JobOut.model_validate(jobs.cancel_job(caller.scope, job_id, utcnow()))

    @v1.post("/jobs/{job_id}/feedback", response_model=JobOut, dependencies=JSON_BODY,
             summary="Score a succeeded job's answer (0..1); the predictor learns from it")
    def feedback(job_id: StorableText, body: FeedbackIn, caller: CallerDep) -> JobOut:
        return JobOut.model_validate(jobs.record_feedback(caller.scope, job_id, body.score, utcnow()))

    @v1.get("/workers", response_model=list[WorkerOut], summary="Live workers and what they measured")
    def list_workers() -> list[WorkerOut]:
        return [WorkerOut.model_validate(w) for w in heartbeats.live(utcnow(), 3 * settings.heartbeat_interval_s)]

    app.include_router(v1, dependencies=AUTHENTICATED)
    app.include_router(openai_router(settings, db, fleet, jobs, json_body=JSON_BODY),
                       dependencies=AUTHENTICATED)

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        body, content_type = exposition(metrics.registry)
        return Response(body, media_type=content_type)

    @app.get("/readyz", summary="Readiness: the database answers (503 otherwise)")
    def readyz() -> dict[str, str]:
        heartbeats.live(utcnow(), 0.0)  # a real query; StorageUnavailable -> 503
        return {"status": "ready"}

    return app

