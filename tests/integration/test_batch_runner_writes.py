"""The batch runner on real Postgres: one job's output never fails the rest of its micro-batch.

The issue this guards: an output holding a NUL character made the micro-batch's shared result
write fail, and every other job of the batch was retried until it failed for good.
"""
from __future__ import annotations

import dataclasses

from sqlalchemy import select, update

from scheduler.fleet import BackendKind, ModelSpec
from scheduler.storage import Database, JobStatus, ResultStore, utcnow
from scheduler.storage.tables import Job
from tests.integration.tickkit import submit
from workers.backends.base import GenerationRequest, GenerationResult
from workers.backends.echo import EchoBackend
from workers.runner import BatchRunner

SPEC = ModelSpec(name="echo", backend=BackendKind.ECHO, weights="none", usd_per_second=0.0, max_batch_jobs=8)


class OddOutputEcho(EchoBackend):
    """The echo test double, answering "nul" and "long reason" prompts the way a misbehaving
    engine might: a NUL character in the text, a finish reason longer than its column."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        result = super().generate(request)
        if "nul" in result.text:
            return dataclasses.replace(result, text=result.text.replace("nul", "\x00"))
        if "long reason" in result.text:
            return dataclasses.replace(result, finish_reason="stopped by something unusual")
        return result


def run_batch(db: Database, prompts: list[str]) -> tuple[list[str], BatchRunner]:
    now = utcnow()
    job_ids = submit(db, len(prompts), now)
    with db.session() as session:
        for job_id, prompt in zip(job_ids, prompts, strict=True):
            session.execute(update(Job).where(Job.id == job_id).values(
                prompt=prompt, status=JobStatus.QUEUED, assigned_model=SPEC.name, dispatch_id="d1"))
    return job_ids, BatchRunner(ResultStore(db), OddOutputEcho(SPEC), SPEC, "w", run_lease_s=60, max_attempts=3,
                                clock=utcnow)


def rows(db: Database, job_ids: list[str]) -> list[Job]:
    with db.session() as session:
        by_id = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    return [by_id[job_id] for job_id in job_ids]


def test_a_nul_in_one_output_is_cleaned_and_noted_and_the_batch_succeeds(pg_db: Database) -> None:
    job_ids, runner = run_batch(pg_db, ["first", "a nul here", "third"])
    stats = runner.run("d1", job_ids)
    assert (stats.succeeded, stats.failed, stats.skipped) == (3, 0, 0)
    first, odd, third = rows(pg_db, job_ids)
    assert [job.status for job in (first, odd, third)] == [JobStatus.SUCCEEDED] * 3
    assert (odd.result_text, odd.notes) == ("a \ufffd here", "attempt 1: output held 1 NUL character; replaced with U+FFFD")
    assert (first.result_text, first.notes, third.result_text) == ("first", None, "third")


def test_a_row_the_database_refuses_fails_only_its_job(pg_db: Database) -> None:
    job_ids, runner = run_batch(pg_db, ["first", "a long reason", "third"])
    stats = runner.run("d1", job_ids)
    assert (stats.succeeded, stats.failed, stats.skipped) == (2, 1, 0)
    first, refused, third = rows(pg_db, job_ids)
    assert [job.status for job in (first, refused, third)] == [JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.SUCCEEDED]
    assert refused.attempts == 1 and (refused.error or "").startswith(
        "the outcome could not be stored: StringDataRightTruncation")
