"""The tick's side of the store: recover lost work, claim the pending window, commit a plan.

Claiming and committing happen in one transaction: the claimed rows stay locked
(``FOR UPDATE SKIP LOCKED`` on Postgres; the database write lock on SQLite) until the plan is
committed, so two ticks running at once see disjoint windows and never dispatch a job twice.

The window is chosen from the backlog by urgency (scheduler/urgency.py), with index scans whose
cost follows the window and not the backlog: first the pending jobs whose deadline is within
URGENT_DEADLINE_LEAD_S (nearest first), then the oldest.

A deferral is written (the job's reason, one decision row) only when its reason changes: a
backlog waiting through many ticks costs nothing per tick, and the decision history stays
proportional to what happened to each job.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, case, delete, func, insert, literal, null, or_, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from scheduler.fleet import Fleet
from scheduler.plan import Deferral, Dispatch, Escalation, ModelState, Plan, WindowJob
from scheduler.storage.batches import settled_quality
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.leader import LeaderTerm, confirm_term
from scheduler.storage.tables import (
    Batch, Decision, Job, JobAttempt, Tenant, Tick, WorkerHeartbeat, cascade_json, cascade_steps, prompt_text,
)
from scheduler.storage.types import JobStatus, utcnow
from scheduler.urgency import URGENT_DEADLINE_LEAD_S

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
DECISIONS: Table = Decision.__table__  # type: ignore[assignment]
DECISION_COLUMNS = ("job_id", "tick_id", "action", "model", "reason", "predicted_quality", "predicted_cost_usd",
                    "created_at")


@dataclass(frozen=True)
class LeaseRecovery:
    requeued: int   # lost messages or lost workers: back to pending, planned again next tick
    failed: int     # ran out of attempts
    expired: int = 0  # still pending past their max_pending
    to_review: int = 0  # cascade escalations that ran out of attempts or time: their best answer is accepted

    @property
    def changed_anything(self) -> bool:
        return bool(self.requeued or self.failed or self.expired or self.to_review)


@dataclass(frozen=True)
class TickRecord:
    """What the ``ticks`` table keeps of a committed tick."""

    term: LeaderTerm | None   # None: an unfenced tick (tests, a one-off run with no leader)
    started_at: dt.datetime
    window_jobs: int


class WindowStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def recover_expired_leases(self, now: dt.datetime, max_attempts: int,
                               term: LeaderTerm | None = None) -> LeaseRecovery:
        """Jobs whose lease ran out go back to pending (or fail after max_attempts runs); jobs
        pending past their max_pending end ``expired`` with the last reason they were given."""
        expired = (Job.status.in_(ACTIVE_STATUSES), Job.lease_expires_at < now)
        out_of_attempts = Job.attempts - Job.attempts_before_step >= max_attempts
        lost = f"lease expired after {max_attempts} attempts (worker lost or model hung)"
        with self.db.session() as session:
            # A cascade's escalation that cannot run keeps the answers the job has: the review
            # accepts the best of them (scheduler/review.py) instead of failing the job.
            to_review = rows_affected(session.execute(
                update(Job).where(Job.id.in_(_lockable_in_id_order(*expired, out_of_attempts,
                                                                   Job.escalate_to.is_not(None))))
                .values(status=JobStatus.REVIEWING, cascade=null(), updated_at=now, lease_expires_at=None,
                        run_token=None, error=lost)))
            failed = rows_affected(session.execute(
                update(Job).where(Job.id.in_(_lockable_in_id_order(*expired, out_of_attempts)))
                .values(status=JobStatus.FAILED, finished_at=now, updated_at=now, lease_expires_at=None,
                        error=lost)
            ))
            requeued = rows_affected(session.execute(
                update(Job).where(Job.id.in_(_lockable_in_id_order(*expired)))
                .values(status=JobStatus.PENDING, updated_at=now, lease_expires_at=None, dispatch_id=None,
                        run_token=None, error="lease expired; re-planned")
            ))
            to_review += rows_affected(session.execute(
                update(Job).where(Job.status == JobStatus.PENDING, Job.expires_at <= now, Job.escalate_to.is_not(None))
                .values(status=JobStatus.REVIEWING, cascade=null(), updated_at=now,
                        error="its escalation was not scheduled within its max_pending")))
            too_old = rows_affected(session.execute(
                update(Job).where(Job.status == JobStatus.PENDING, Job.expires_at <= now)
                .values(status=JobStatus.EXPIRED, finished_at=now, updated_at=now,
                        error=literal("not scheduled within its max_pending; last reason: ")
                        + func.coalesce(Job.assignment_reason, "none recorded"))))
            if term is not None and (failed or requeued or too_old or to_review):
                confirm_term(session, term, now)
        return LeaseRecovery(requeued=requeued, failed=failed, expired=too_old, to_review=to_review)

    def next_window_ids(self, limit: int, now: dt.datetime) -> list[str]:
        """The ids the next window would claim, in its order (no lock: a read-ahead, so the
        scheduler can score them while it waits for the tick)."""
        with self.db.session() as session:
            rows = _choose_window(lambda query: list(session.execute(query).all()), select(Job.id),
                                  limit, now, _pending_tenant_weights(session))
        return [row.id for row in rows]

    def queued_dispatches(self, queued_before: dt.datetime) -> dict[str, set[str]]:
        """model -> dispatch ids of jobs queued (published, not yet started) before the time given."""
        with self.db.session() as session:
            rows = session.execute(
                select(Job.assigned_model, Job.dispatch_id).distinct()
                .where(Job.status == JobStatus.QUEUED, Job.queued_at <= queued_before,
                       Job.dispatch_id.is_not(None))).all()
        found: dict[str, set[str]] = {}
        for model, dispatch_id in rows:
            found.setdefault(str(model), set()).add(str(dispatch_id))
        return found

    def replan_lost_dispatches(self, dispatch_ids: set[str], now: dt.datetime,
                               term: LeaderTerm | None = None) -> int:
        """Jobs still queued under a dispatch whose message the broker lost go back to pending at
        once (no attempt counted: they never ran). A worker that claimed one meanwhile keeps it:
        the job is no longer ``queued``."""
        if not dispatch_ids:
            return 0
        with self.db.session() as session:
            moved = rows_affected(session.execute(
                update(Job).where(Job.status == JobStatus.QUEUED, Job.dispatch_id.in_(sorted(dispatch_ids)))
                .values(status=JobStatus.PENDING, dispatch_id=None, lease_expires_at=None, updated_at=now,
                        error="its message was lost on the broker; re-planned")))
            if term is not None and moved:
                confirm_term(session, term, now)
        return moved

    def prune_history(self, before: dt.datetime, max_rows: int) -> int:
        """Delete up to ``max_rows`` decisions (and ticks) older than ``before``; the jobs keep
        their final reason. Bounded per call so the loop never stalls on a large backlog of history."""
        with self.db.session() as session:
            old_decisions = select(Decision.id).where(Decision.created_at < before).limit(max_rows)
            pruned = rows_affected(session.execute(delete(Decision).where(Decision.id.in_(old_decisions))))
            old_ticks = select(Tick.tick_id).where(Tick.started_at < before).limit(max_rows)
            pruned += rows_affected(session.execute(delete(Tick).where(Tick.tick_id.in_(old_ticks))))
        return pruned

    def prompt_texts(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The text the predictor scores, per job id."""
        with self.db.session() as session:
            rows = session.execute(select(Job.id, Job.prompt, Job.messages).where(Job.id.in_(job_ids))).all()
        return {row.id: prompt_text(row.prompt, row.messages) for row in rows}

    @contextmanager
    def window(self, *, dry_run: bool = False) -> Iterator[ClaimedWindow]:
        """A transaction in which the tick claims, plans and commits; a dry run rolls back."""
        with self.db.session(rollback_only=dry_run) as session:
            yield ClaimedWindow(session, self.db.is_sqlite)


class ClaimedWindow:
    """Operations inside the tick's transaction."""

    def __init__(self, session: Session, is_sqlite: bool) -> None:
        self.session = session
        self.is_sqlite = is_sqlite

    def claim_pending(self, limit: int, now: dt.datetime) -> list[WindowJob]:
        """Lock up to ``limit`` pending jobs, most urgent first (see the module doc), skipping rows
        another tick holds."""
        # Plain columns, not ORM objects: a 10k-job window is read in one pass without identity-map work.
        columns = select(*CLAIMED_COLUMNS, Batch.alpha, Batch.max_cost_usd.label("batch_cap")).outerjoin(
            Batch, Job.batch_id == Batch.id)
        tenants = _pending_tenant_weights(self.session)
        rows = _choose_window(self._locked, columns, limit, now, tenants)
        batch_spent = committed_spend(self.session, Job.batch_id, {r.batch_id for r in rows if r.batch_cap is not None})
        caps = _tenant_caps(self.session, {row.owner for row in rows})
        tenant_spent = committed_spend(self.session, Job.owner, set(caps))
        models_run = _models_run(self.session, [row.id for row in rows if row.escalate_to is not None])
        settled = settled_quality(self.session, {row.batch_id for row in rows if row.alpha is not None})
        return [_window_job(
            row, None if row.batch_cap is None else row.batch_cap - batch_spent.get(row.batch_id, 0.0),
            tenants.get(row.owner, DEFAULT_TENANT_WEIGHT),
            None if row.owner not in caps else caps[row.owner] - tenant_spent.get(row.owner, 0.0),
            models_run.get(row.id, ()), settled.get(row.batch_id, (0, 0.0)))
            for row in rows]

    def _locked(self, query: Select[Any]) -> list[Row[Any]]:
        return list(self.session.execute(query.with_for_update(skip_locked=True, of=Job.__table__)).all())

    def model_states(self, fleet: Fleet, now: dt.datetime, heartbeat_ttl_s: float) -> list[ModelState]:
        """Live worker slots, backlog and measured speed per model.

        Speeds are averaged over live workers weighted by the jobs each has done, so a worker
        that just started (and measured nothing yet) does not dilute the others.
        """
        cutoff = now - dt.timedelta(seconds=heartbeat_ttl_s)
        beats = self.session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at >= cutoff)).all()
        backlog = dict(self.session.execute(
            select(Job.assigned_model, func.count()).where(Job.status.in_(ACTIVE_STATUSES))
            .group_by(Job.assigned_model)).all())
        states = []
        for spec in fleet.models:
            mine = [b for b in beats if b.model == spec.name]
            states.append(ModelState(
                spec.name, live_workers=sum(b.concurrency for b in mine), backlog_jobs=int(backlog.get(spec.name, 0)),
                tokens_per_s=_weighted_mean([(b.tokens_per_s, b.jobs_done) for b in mine]),
                mean_latency_s=_weighted_mean([(b.mean_latency_s, b.jobs_done) for b in mine])))
        return states

    def commit_plan(self, plan: Plan, dispatches: Sequence[Dispatch], jobs: Sequence[WindowJob], now: dt.datetime,
                    queue_lease_s: float, record: TickRecord) -> None:
        """Mark assigned jobs queued (with their dispatch and lease), end the jobs the plan ends,
        store the reasons of deferrals that changed, record each of those decisions and the tick;
        last, confirm this leader's term (LostLeadership rolls the whole tick back)."""
        dispatch_of = {job_id: d.dispatch_id for d in dispatches for job_id in d.job_ids}
        lease = now + dt.timedelta(seconds=queue_lease_s)
        plan = _without_forbidden_cascades(plan, jobs)
        last_reason = {job.id: job.last_reason for job in jobs}
        ended = [d for d in plan.deferrals if d.ending is not None]
        changed = [d for d in plan.deferrals if d.ending is None and d.reason != last_reason.get(d.job_id)]
        self._write_plan(plan, changed, dispatch_of, lease, now)
        if ended:
            # An escalation the plan ends keeps the job's answers: the review accepts the best.
            escalated = {job.id for job in jobs if job.escalate_to is not None}
            self.session.execute(update(Job), [
                {"id": d.job_id, "status": JobStatus.REVIEWING, "cascade": None, "error": d.reason,
                 "assignment_reason": d.reason, "updated_at": now} if d.job_id in escalated else
                {"id": d.job_id, "status": JobStatus(d.ending), "error": d.reason, "assignment_reason": d.reason,
                 "finished_at": now, "updated_at": now} for d in ended if d.ending is not None])
        # one row per decision, in DECISION_COLUMNS order
        decisions = [
            (a.job_id, plan.tick_id, "assigned", a.model, a.reason, a.predicted_quality, a.predicted_cost_usd, now)
            for a in plan.assignments
        ] + [
            (d.job_id, plan.tick_id, d.ending.value if d.ending else "deferred", None, d.reason, None, None, now)
            for d in (*ended, *changed)
        ]
        if decisions and not self.is_sqlite:
            # Postgres: COPY, one stream for the whole window (an INSERT per row through the
            # driver's pipeline took ~1 s at 10k decisions).
            self._copy_rows("decisions", DECISION_COLUMNS, decisions)
        elif decisions:
            # Core insert: one multi-row statement per chunk, no ORM bookkeeping per decision.
            self.session.execute(insert(DECISIONS), [dict(zip(DECISION_COLUMNS, row, strict=True)) for row in decisions])
        if decisions:
            term = record.term
            self.session.execute(insert(Tick).values(
                tick_id=plan.tick_id, epoch=term.epoch if term else 0, holder=term.holder if term else "unfenced",
                started_at=record.started_at, committed_at=utcnow(), window_jobs=record.window_jobs,
                assigned=len(plan.assignments), deferred=len(changed), expired=len(ended)))
        if record.term is not None:
            confirm_term(self.session, record.term, now)

    def _copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """COPY ``rows`` into ``table`` on the tick's own connection (inside its transaction)."""
        driver = self.session.connection().connection.driver_connection
        assert driver is not None, "the tick's connection is open inside its transaction"
        with driver.cursor() as cursor, cursor.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _write_plan(self, plan: Plan, changed: Sequence[Deferral], dispatch_of: dict[str, str],
                    lease: dt.datetime, now: dt.datetime) -> None:
        """Assigned jobs -> queued with their model, reason, prediction, dispatch and lease;
        deferred jobs whose reason changed -> that reason (they stay pending)."""
        # (id, model, reason, quality, cost, dispatch, exploring, cascade as JSON text); no model: a
        # deferral's new reason
        per_job: list[tuple[str, str | None, str, float | None, float | None, str | None, bool | None,
                            str | None]] = [
            (a.job_id, a.model, a.reason, a.predicted_quality, a.predicted_cost_usd, dispatch_of[a.job_id],
             a.exploring, _cascade_text(a.cascade)) for a in plan.assignments]
        per_job += [(d.job_id, None, d.reason, None, None, None, None, None) for d in changed]
        if not per_job:
            return
        if self.is_sqlite:
            # The embedded default plans small windows; SQLite has no arrays for the form below.
            common = {"status": JobStatus.QUEUED, "lease_expires_at": lease, "queued_at": now, "updated_at": now}
            if plan.assignments:
                cascades = {a.job_id: cascade_json(a.cascade) for a in plan.assignments}
                self.session.execute(update(Job), [
                    {"id": i, "assigned_model": m, "assignment_reason": r, "predicted_quality": q,
                     "predicted_cost_usd": c, "dispatch_id": d, "exploring": e, "cascade": cascades[i]} | common
                    for i, m, r, q, c, d, e, _ in per_job if m is not None])
            if changed:
                self.session.execute(update(Job), [{"id": d.job_id, "assignment_reason": d.reason, "updated_at": now}
                                                   for d in changed])
            return
        # Postgres: COPY the plan into a temporary table, then one UPDATE joined to it per kind of
        # row (25% faster at 10k jobs than passing the columns as bound arrays through unnest,
        # which the driver adapts value by value; an UPDATE per job is ~10x slower).
        self.session.execute(text(
            "CREATE TEMPORARY TABLE IF NOT EXISTS tick_plan (id varchar, model varchar, reason text,"
            " quality float8, cost float8, dispatch varchar, exploring boolean, cascade json) ON COMMIT DELETE ROWS"))
        self._copy_rows("tick_plan", ("id", "model", "reason", "quality", "cost", "dispatch", "exploring",
                                      "cascade"), per_job)
        if plan.assignments:
            self.session.execute(text(
                "UPDATE jobs SET status = :status, assigned_model = p.model, assignment_reason = p.reason,"
                " predicted_quality = p.quality, predicted_cost_usd = p.cost, dispatch_id = p.dispatch,"
                " exploring = p.exploring, cascade = p.cascade, lease_expires_at = :lease, queued_at = :now,"
                " updated_at = :now"
                " FROM tick_plan AS p WHERE jobs.id = p.id AND p.model IS NOT NULL"),
                {"status": JobStatus.QUEUED.value, "lease": lease, "now": now})
        if changed:
            self.session.execute(text(
                "UPDATE jobs SET assignment_reason = p.reason, updated_at = :now"
                " FROM tick_plan AS p WHERE jobs.id = p.id AND p.model IS NULL"), {"now": now})


def _without_forbidden_cascades(plan: Plan, jobs: Sequence[WindowJob]) -> Plan:
    """The plan with no cascade stored for a job that may not cascade (its or its batch's
    ``cascade: false``): whatever a policy planned, its one answer is accepted as it is."""
    forbidden = {job.id for job in jobs if not job.cascade_allowed}
    if not any(a.cascade and a.job_id in forbidden for a in plan.assignments):
        return plan
    return dataclasses.replace(plan, assignments=tuple(
        dataclasses.replace(a, cascade=()) if a.cascade and a.job_id in forbidden else a for a in plan.assignments))


def _cascade_text(steps: Sequence[Escalation]) -> str | None:
    """An assignment's cascade as the JSON text COPY writes into ``jobs.cascade``."""
    stored = cascade_json(steps)
    return None if stored is None else json.dumps(stored)


def _weighted_mean(values: list[tuple[float | None, int]]) -> float | None:
    known = [(value, max(weight, 1)) for value, weight in values if value is not None]
    if not known:
        return None
    return sum(value * weight for value, weight in known) / sum(weight for _, weight in known)


CLAIMED_COLUMNS = (Job.id, Job.batch_id, Job.prompt, Job.messages, Job.max_tokens, Job.min_quality, Job.deadline_at,
                   Job.allowed_models, Job.max_cost_usd, Job.created_at, Job.attempts, Job.on_deadline_miss,
                   Job.assignment_reason, Job.owner, Job.cascade_allowed, Job.escalate_to, Job.cascade)


def _lockable_in_id_order(*conditions: Any) -> Select[Any]:
    """The ids of matching jobs, locked in id order and skipping rows another transaction holds:
    workers lock a micro-batch's rows in id order too (storage/results.py), so the two never
    deadlock, and a row a worker is writing right now is left to it (its lease is being cleared)."""
    return select(Job.id).where(*conditions).order_by(Job.id).with_for_update(skip_locked=True)


def _urgent_first(query: Select[Any], limit: int, now: dt.datetime) -> Select[Any]:
    """Pending jobs whose deadline is near, nearest first (the partial index on deadline_at)."""
    return (query.where(Job.status == JobStatus.PENDING, Job.deadline_at <= _urgent_before(now))
            .order_by(Job.deadline_at, Job.id).limit(max(limit, 0)))


def _oldest_first(query: Select[Any], limit: int, now: dt.datetime, already: Sequence[str] = (),
                  tenant: str | None = None) -> Select[Any]:
    """Pending jobs whose deadline is not near (those came first), of ``tenant`` or of anyone,
    oldest first (the indexes on status or owner, created_at), except those ``already`` taken.
    The near deadlines are left out by condition, not by id: thousands of ids in a NOT IN list
    cost more to send than the rows they exclude."""
    query = query.where(Job.status == JobStatus.PENDING,
                        or_(Job.deadline_at.is_(None), Job.deadline_at > _urgent_before(now)))
    if tenant is not None:
        query = query.where(Job.owner == tenant)
    if already:
        query = query.where(Job.id.not_in(list(already)))
    return query.order_by(Job.created_at, Job.id).limit(max(limit, 0))


def _urgent_before(now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=URGENT_DEADLINE_LEAD_S)


def _choose_window(fetch: Callable[[Select[Any]], list[Row[Any]]], columns: Select[Any], limit: int,
                   now: dt.datetime, tenant_weights: dict[str, float]) -> list[Row[Any]]:
    """The window's rows, most urgent first, in three slices each read by an index:
    jobs whose deadline is near; then, when several tenants wait, each tenant's oldest jobs, a
    share of the rest of the window by its weight (so one tenant's backlog cannot keep another's
    jobs out of the window); then the oldest of anyone's to fill what is left."""
    rows = fetch(_urgent_first(columns, limit, now))
    room = limit - len(rows)
    shared: list[str] = []    # ids taken by the tenants' shares, which the fill must skip
    if len(tenant_weights) > 1 and room > 0:
        total = sum(tenant_weights.values())
        for tenant, weight in sorted(tenant_weights.items()):
            share = min(max(1, int(room * weight / total)), limit - len(rows))
            if share <= 0:
                break
            found = fetch(_oldest_first(columns, share, now, shared, tenant))
            rows += found
            shared += [row.id for row in found]
    if len(rows) >= limit:
        return rows
    return rows + fetch(_oldest_first(columns, limit - len(rows), now, shared))


# A tenant without a row in the tenants table: weight 1, no limits.
DEFAULT_TENANT_WEIGHT = 1.0
# The distinct owners of pending jobs by skipping through the pending-owner index, one probe per
# tenant, instead of reading every pending row (a recursive CTE: Postgres has no skip scan).
PENDING_OWNERS_SQL = text(
    "WITH RECURSIVE pending_owners(owner) AS ("
    " SELECT min(owner) FROM jobs WHERE status = 'pending'"
    " UNION ALL SELECT (SELECT min(j.owner) FROM jobs AS j WHERE j.status = 'pending' AND j.owner > p.owner)"
    " FROM pending_owners AS p WHERE p.owner IS NOT NULL)"
    " SELECT owner FROM pending_owners WHERE owner IS NOT NULL")


def _pending_tenant_weights(session: Session) -> dict[str, float]:
    """Every tenant with pending jobs, and its fair-share weight."""
    owners = list(session.scalars(PENDING_OWNERS_SQL))
    weights = dict(session.execute(select(Tenant.name, Tenant.weight).where(Tenant.name.in_(owners))).all()) \
        if owners else {}
    return {owner: float(weights.get(owner, DEFAULT_TENANT_WEIGHT)) for owner in owners}


def _tenant_caps(session: Session, tenants: set[str]) -> dict[str, float]:
    """The spend caps of those ``tenants`` that have one."""
    if not tenants:
        return {}
    return {name: float(cap or 0.0) for name, cap in session.execute(
        select(Tenant.name, Tenant.max_spend_usd).where(Tenant.name.in_(sorted(tenants)),
                                                        Tenant.max_spend_usd.is_not(None))).all()}


def committed_spend(session: Session, key: Any, values: set[Any]) -> dict[Any, float]:
    """Per value of ``key`` (Job.batch_id, Job.owner): the real cost of its finished jobs plus the
    predicted cost reserved by its queued and running ones. Budgets are checked against this, so
    dispatched work never exceeds a cap even before its real cost is known."""
    values = {value for value in values if value is not None}
    if not values:
        return {}
    # A job's cost_usd is the sum of its attempts so far (a cascade runs several); a queued or
    # running job also reserves its next run's predicted cost.
    spent = func.coalesce(func.sum(func.coalesce(Job.cost_usd, 0.0) + case(
        (Job.status.in_(ACTIVE_STATUSES), func.coalesce(Job.predicted_cost_usd, 0.0)), else_=0.0)), 0.0)
    return {k: float(v) for k, v in session.execute(
        select(key, spent).where(key.in_(sorted(values))).group_by(key)).all()}


def _models_run(session: Session, job_ids: list[str]) -> dict[str, tuple[str, ...]]:
    """The models that answered each of these (escalated) jobs, in the order they ran."""
    if not job_ids:
        return {}
    found: dict[str, tuple[str, ...]] = {}
    for job_id, model in session.execute(
            select(JobAttempt.job_id, JobAttempt.model)
            .where(JobAttempt.job_id.in_(job_ids), JobAttempt.answer.is_not(None))
            .order_by(JobAttempt.job_id, JobAttempt.attempt)):
        found[job_id] = (*found.get(job_id, ()), model)
    return found


def _window_job(row: Row[Any], budget_left_usd: float | None, tenant_weight: float,
                tenant_budget_left_usd: float | None, models_run: tuple[str, ...] = (),
                batch_settled: tuple[int, float] = (0, 0.0)) -> WindowJob:
    return WindowJob(
        id=row.id, batch_id=row.batch_id, prompt_text=prompt_text(row.prompt, row.messages), max_tokens=row.max_tokens,
        min_quality=row.min_quality, deadline_at=row.deadline_at,
        allowed_models=tuple(row.allowed_models) if row.allowed_models else None,
        max_cost_usd=row.max_cost_usd, batch_alpha=row.alpha, created_at=row.created_at,
        attempts=row.attempts, expire_on_deadline_miss=row.on_deadline_miss == "expire",
        batch_budget_left_usd=budget_left_usd, last_reason=row.assignment_reason,
        tenant=row.owner, tenant_weight=tenant_weight, tenant_budget_left_usd=tenant_budget_left_usd,
        cascade_allowed=row.cascade_allowed is not False, escalate_to=row.escalate_to,
        cascade_rest=cascade_steps(row.cascade) if row.escalate_to is not None else (), models_run=models_run,
        batch_settled_jobs=batch_settled[0], batch_settled_p_sum=batch_settled[1],
    )
