"""The ``models`` table: the fleet as last read from the fleet file, for listing and history."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from scheduler.fleet import Fleet
from scheduler.storage.database import Database
from scheduler.storage.tables import FleetModel


class FleetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def sync(self, fleet: Fleet, now: dt.datetime) -> None:
        """Upsert every model of the file; models no longer in it are kept but disabled."""
        with self.db.session() as session:
            for spec in fleet.models:
                row = session.get(FleetModel, spec.name) or FleetModel(name=spec.name)
                row.backend = spec.backend.value
                row.spec = spec.model_dump(mode="json")
                row.enabled = True
                row.updated_at = now
                session.add(row)
            session.execute(update(FleetModel).where(FleetModel.name.not_in(fleet.names))
                            .values(enabled=False, updated_at=now))

    def enabled(self) -> list[FleetModel]:
        with self.db.session() as session:
            return list(session.scalars(select(FleetModel).where(FleetModel.enabled).order_by(FleetModel.name)))
