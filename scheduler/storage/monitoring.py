"""What the scheduler's /metrics reads from the job store at scrape time: jobs waiting and running,
spend against caps, and promised against realised quality.

Every query is bounded, because Prometheus asks every few seconds however large the history is:
active jobs are counted through the status index; spend is summed only for tenants with a
``max_spend_usd`` and open batches with a ``max_cost_usd`` (at most ``max_series`` of each, the
work the tick already does for them), and quality only over jobs graded since ``graded_since``
(the ``scored_at`` index).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from scheduler.storage.database import Database
from scheduler.storage.tables import Batch, Job, Tenant
from scheduler.storage.types import BatchStatus, JobStatus
from scheduler.storage.window import ACTIVE_STATUSES

WAITING_OR_RUNNING = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.REVIEWING)
OPEN_BATCH_STATUSES = tuple(status.value for status in BatchStatus if not status.is_final)


@dataclass(frozen=True)
class Spend:
    """One capped tenant's or batch's spend, as its cap is enforced: ``spent_usd`` (what finished
    jobs cost) plus ``reserved_usd`` (the predicted cost of its queued and running jobs)."""

    name: str          # the tenant, or the batch id
    tenant: str
    cap_usd: float
    spent_usd: float
    reserved_usd: float


@dataclass(frozen=True)
class Quality:
    """One model's jobs graded recently that the optimizer chose it for (exploring jobs made no promise)."""

    model: str
    graded_jobs: int
    promised: float    # mean predicted p at dispatch
    realised: float    # mean score (grade or feedback)


@dataclass(frozen=True)
class StoreSnapshot:
    jobs_by_status: dict[str, int]    # pending, queued and running (0 when none)
    tenants: list[Spend]
    batches: list[Spend]
    quality: list[Quality]


class MonitoringStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def snapshot(self, graded_since: dt.datetime, max_series: int) -> StoreSnapshot:
        with self.db.session() as session:
            counts = dict.fromkeys((status.value for status in WAITING_OR_RUNNING), 0)
            for status, count in session.execute(
                    select(Job.status, func.count()).where(Job.status.in_(WAITING_OR_RUNNING)).group_by(Job.status)):
                counts[JobStatus(status).value] = int(count)
            tenants = session.execute(select(Tenant.name, Tenant.name, Tenant.max_spend_usd)
                                      .where(Tenant.max_spend_usd.is_not(None))
                                      .order_by(Tenant.name).limit(max_series)).all()
            batches = session.execute(select(Batch.id, Batch.owner, Batch.max_cost_usd)
                                      .where(Batch.max_cost_usd.is_not(None),
                                             Batch.status.in_(OPEN_BATCH_STATUSES))
                                      .order_by(Batch.created_at.desc()).limit(max_series)).all()
            return StoreSnapshot(counts, _spend(session, Job.owner, tenants), _spend(session, Job.batch_id, batches),
                                 _quality(session, graded_since))


def _spend(session: Session, key: Any, capped: Sequence[Any]) -> list[Spend]:
    """Spent and reserved per value of ``key`` (Job.owner or Job.batch_id) for the ``capped``
    rows (name, tenant, cap). The split of window.committed_spend, which the caps are held to."""
    if not capped:
        return []
    active = Job.status.in_(ACTIVE_STATUSES)
    # Spent: every job's attempts so far (a cascade's escalation that is running has spent on its
    # earlier models); reserved: the predicted cost of the runs queued or running now.
    sums = {name: (float(spent or 0.0), float(reserved or 0.0)) for name, spent, reserved in session.execute(
        select(key, func.sum(Job.cost_usd), func.sum(case((active, Job.predicted_cost_usd), else_=None)))
        .where(key.in_([row[0] for row in capped])).group_by(key))}
    return [Spend(name, tenant, float(cap), *sums.get(name, (0.0, 0.0))) for name, tenant, cap in capped]


def _quality(session: Session, graded_since: dt.datetime) -> list[Quality]:
    rows = session.execute(
        select(Job.assigned_model, func.count(), func.avg(Job.predicted_quality), func.avg(Job.score))
        .where(Job.scored_at > graded_since, Job.score.is_not(None), Job.predicted_quality.is_not(None),
               Job.assigned_model.is_not(None), Job.exploring.is_not(True))
        .group_by(Job.assigned_model)).all()
    return [Quality(str(model), int(count), float(promised), float(realised))
            for model, count, promised, realised in rows]
