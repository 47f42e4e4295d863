"""Persistence. The only package that imports SQLAlchemy."""
from scheduler.storage.database import Database
from scheduler.storage.fleet_table import FleetStore
from scheduler.storage.heartbeats import Beat, HeartbeatStore
from scheduler.storage.jobs import JobStore
from scheduler.storage.results import ClaimedJob, Failure, Outcome, ResultStore
from scheduler.storage.tenants import CreatedKey, KeyOwner, TenantStore
from scheduler.storage.types import JobStatus, utcnow
from scheduler.storage.window import WindowStore

__all__ = ["Beat", "ClaimedJob", "CreatedKey", "Database", "Failure", "FleetStore", "HeartbeatStore",
           "JobStatus", "JobStore", "KeyOwner", "Outcome", "ResultStore", "TenantStore", "WindowStore", "utcnow"]
