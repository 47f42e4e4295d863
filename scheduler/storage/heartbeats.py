"""Worker heartbeats: which worker hosts which model, and what it measured of itself."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select

from scheduler.storage.database import Database
from scheduler.storage.tables import WorkerHeartbeat


@dataclass(frozen=True)
class Beat:
    worker_id: str
    model: str
    host: str
    pid: int
    concurrency: int
    jobs_done: int
    tokens_per_s: float | None
    mean_latency_s: float | None
    started_at: dt.datetime


class HeartbeatStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def beat(self, beat: Beat, now: dt.datetime) -> None:
        with self.db.session() as session:
            row = session.get(WorkerHeartbeat, beat.worker_id)
            if row is None:
                row = WorkerHeartbeat(worker_id=beat.worker_id)
                session.add(row)
            for name, value in vars(beat).items():
                setattr(row, name, value)
            row.last_seen_at = now

    def remove(self, worker_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.worker_id == worker_id))

    def live(self, now: dt.datetime, ttl_s: float) -> list[WorkerHeartbeat]:
        cutoff = now - dt.timedelta(seconds=ttl_s)
        with self.db.session() as session:
            return list(session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at >= cutoff)
                                        .order_by(WorkerHeartbeat.model, WorkerHeartbeat.worker_id)))
