"""One scheduling tick.

    0. recover: queued/running jobs whose lease ran out go back to pending (or fail); jobs
       pending past their max_pending expire
    1. read the fleet: live workers, backlog and free capacity per model
    2. claim the pending window (FOR UPDATE SKIP LOCKED), most urgent first and sized to what the
       fleet can take now (``window_headroom`` x its free capacity), so a tick's work follows
       what can be dispatched, not the size of the backlog
    3-4. the policy predicts and solves the assignment -> a Plan (data, with reasons)
    5. commit the plan (jobs queued with a lease, changed decisions recorded), fenced by the
       leader's term; only then publish one Celery task per (model, micro-batch)

A crash between 5's commit and publish leaves jobs queued with a lease: step 0 of a later tick
plans them again. ``dry_run`` runs 1-4 inside a transaction that is rolled back and publishes
nothing.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.estimates import window_size
from scheduler.fleet import Fleet
from scheduler.plan import Dispatch, ModelState, Plan, WindowJob, plan_dispatches
from scheduler.settings import Settings
from scheduler.storage.leader import LeaderTerm
from scheduler.storage.window import LeaseRecovery, TickRecord, WindowStore


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def plan(self, jobs: Sequence[WindowJob], states: Sequence[ModelState], now: dt.datetime,
             tick_id: str) -> Plan: ...


@dataclass
class PublishReport:
    published: int = 0
    failed: list[tuple[Dispatch, str]] = field(default_factory=list)


class Dispatcher(Protocol):
    def publish(self, dispatches: Sequence[Dispatch]) -> PublishReport: ...


@dataclass(frozen=True)
class TickReport:
    plan: Plan
    recovery: LeaseRecovery
    states: list[ModelState]
    dispatches: list[Dispatch]
    publish: PublishReport | None
    dry_run: bool
    stage_s: dict[str, float] = field(default_factory=dict)
    window_jobs: int = 0

    def summary(self) -> str:
        published = "dry run: nothing written" if self.dry_run else (
            f"{self.publish.published if self.publish else 0} tasks published"
            + (f", {len(self.publish.failed)} failed (lease will retry)" if self.publish and self.publish.failed else ""))
        return (f"tick {self.plan.tick_id[:8]}: window {self.window_jobs}, {len(self.plan.assignments)} assigned, "
                f"{len(self.plan.deferrals)} deferred or ended, {self.recovery.requeued} re-planned after lease, "
                f"{self.recovery.failed} failed, {self.recovery.expired} expired past max_pending; {published}")


def run_tick(store: WindowStore, policy: Policy, fleet: Fleet, dispatcher: Dispatcher | None,
             settings: Settings, now: dt.datetime, *, dry_run: bool = False,
             term: LeaderTerm | None = None) -> TickReport:
    """One tick. ``term``: the leader's term that must still hold when the plan commits (None for
    an unfenced tick: tests, and a one-off ``switchyard tick`` with no scheduler running)."""
    stage_s: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        stage_s[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    recovery = LeaseRecovery(0, 0) if dry_run else store.recover_expired_leases(now, settings.max_attempts, term)
    lap("recover")
    with store.window(dry_run=dry_run) as window:
        states = window.model_states(fleet, now, heartbeat_ttl_s=settings.heartbeat_ttl_s)
        size = window_size(fleet, states, settings.plan_horizon_s, settings.window_headroom,
                           settings.window_min_jobs, settings.window_max_jobs)
        jobs = window.claim_pending(size, now)
        lap("claim")
        plan = policy.plan(jobs, states, now, tick_id=str(uuid.uuid4()))
        lap("plan")
        dispatches = plan_dispatches(plan, fleet)
        if not dry_run:
            window.commit_plan(plan, dispatches, jobs, now, settings.queue_lease_s,
                               TickRecord(term, now, len(jobs)))
    lap("commit")
    publish = None
    if not dry_run and dispatcher is not None:
        publish = dispatcher.publish(dispatches)
    lap("publish")
    return TickReport(plan, recovery, states, dispatches, publish, dry_run, stage_s, window_jobs=len(jobs))
