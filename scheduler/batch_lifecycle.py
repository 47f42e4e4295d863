"""Batches move through OpenAI's statuses between ticks: ``advance_batches`` is one bounded step.

in_progress ──(every job final)──> finalizing ──(files written)──> completed | expired
     │                                                                     ▲
     └──(completion window over: jobs not yet running end expired)─────────┘
cancelling ──(no job left running; files written)──> cancelled

A cancelled or expired batch still gets its finished answers in its output file; requests that
never ran are in its error file. Each call handles at most ``BATCHES_PER_STEP`` batches per
transition, so a scheduler's upkeep stays short however many batches finish at once, and every
transition is guarded in the store (``scheduler/storage/batches.py``), so two schedulers may
run it at the same time.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.openai_compat.answers import output_line
from scheduler.storage.batches import BatchStore
from scheduler.storage.database import Database
from scheduler.storage.tables import Job
from scheduler.storage.types import BatchStatus

log = logging.getLogger(__name__)

BATCHES_PER_STEP = 4


@dataclass(frozen=True)
class BatchProgress:
    jobs_ended: int = 0                                  # jobs of cancelled or expired batches that never ran
    finalizing: list[str] = field(default_factory=list)  # batches that began finalizing
    finished: list[tuple[str, BatchStatus]] = field(default_factory=list)


def advance_batches(db: Database, now: dt.datetime) -> BatchProgress:
    store = BatchStore(db)
    progress = BatchProgress(
        jobs_ended=store.end_waiting_jobs_of_ended_batches(now, BATCHES_PER_STEP),
        finalizing=store.start_finalizing(now, BATCHES_PER_STEP),
        finished=store.finish(now, BATCHES_PER_STEP, render_output_files))
    for batch_id, status in progress.finished:
        log.info("batch %s %s; its output and error files are written", batch_id, status.value)
    return progress


def render_output_files(jobs: Iterable[Job]) -> tuple[bytes | None, bytes | None]:
    """A finished batch's output file (answered requests) and error file (the rest), as JSONL in
    its jobs' order; None for a file that would be empty."""
    answered: list[str] = []
    unanswered: list[str] = []
    for job in jobs:
        ok, line = output_line(job)
        (answered if ok else unanswered).append(json.dumps(line, ensure_ascii=False))
    return _jsonl(answered), _jsonl(unanswered)


def _jsonl(lines: list[str]) -> bytes | None:
    return "".join(line + "\n" for line in lines).encode() if lines else None
