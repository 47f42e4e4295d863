"""Column types and state enums shared by every table."""
from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class JobStatus(str, enum.Enum):
    PENDING = "pending"      # submitted, waiting for a tick
    QUEUED = "queued"        # planned and published to model.<name>; lease = queue lease
    RUNNING = "running"      # claimed by a worker; lease = run lease
    # answered, and its plan has a cascade step (or it already escalated): the scheduler judges
    # the answers so far, then accepts the best (succeeded) or escalates (pending, next model pinned)
    REVIEWING = "reviewing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
CANCELLABLE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.QUEUED})


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    Postgres keeps the zone; SQLite stores naive text, so values are normalised to UTC on the
    way in and tagged UTC on the way out. Comparisons in SQL then agree on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def utcnow() -> dt.datetime:
    """The current time, aware, UTC. Pure code takes ``now`` as a parameter instead."""
    return dt.datetime.now(dt.timezone.utc)


class BatchStatus(str, enum.Enum):
    """A batch's status, as OpenAI's Batches API names them (the ``batches.status`` column)."""

    VALIDATING = "validating"    # its input file is being read (within the create request)
    FAILED = "failed"            # its input file was invalid: see its errors; it has no jobs
    IN_PROGRESS = "in_progress"  # its jobs are being scheduled and run
    FINALIZING = "finalizing"    # every job is final; its output and error files are being written
    COMPLETED = "completed"
    EXPIRED = "expired"          # its completion window ended with requests not run (they are in the error file)
    CANCELLING = "cancelling"    # cancelled: waiting for its running jobs to end
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)

