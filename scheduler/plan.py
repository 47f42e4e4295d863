"""The decision of one tick, as data.

A tick produces a frozen ``Plan``; a separate step applies it (commit, then publish).
``switchyard tick --dry-run``, replay and tests all read the same object.
"""
from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from scheduler.fleet import Fleet



@dataclass(frozen=True)
class Escalation:
    """One step of a cascade: after the models so far have answered, stop if the best answer's
    post-hoc p (scheduler/predictor/posthoc.py) is at least ``accept_at``, else run the job on
    ``next_model`` too; the best judged answer is kept. ``accept_at`` above 1 always runs it (a
    second opinion)."""

    accept_at: float
    next_model: str


@dataclass(frozen=True)
class WindowJob:
    """What the policy needs to know about one pending job (no database types)."""

    id: str
    batch_id: str | None
    prompt_text: str
    max_tokens: int
    min_quality: float | None
    deadline_at: dt.datetime | None
    allowed_models: tuple[str, ...] | None
    max_cost_usd: float | None
    batch_alpha: float | None
    created_at: dt.datetime
    attempts: int
    expire_on_deadline_miss: bool = False
    batch_budget_left_usd: float | None = None   # the batch's cap minus what it spent and reserved
    # The batch's jobs that earlier ticks dispatched, and the sum of their predicted quality: its
    # alpha is a mean over the whole batch, so they count in this tick's quality row too.
    batch_settled_jobs: int = 0
    batch_settled_p_sum: float = 0.0
    last_reason: str | None = None               # what the job was last told (a deferral repeats it silently)
    tenant: str = "default"                      # who submitted it
    tenant_weight: float = 1.0                   # the tenant's share of scarce capacity, relative to others'
    tenant_budget_left_usd: float | None = None  # the tenant's spend cap minus what it spent and reserved
    # A job back from a cascade step (its answers so far were judged too weak): it must run
    # ``escalate_to`` next, then follow ``cascade_rest``; its quality was promised when its cascade
    # was planned, so it does not count towards its batch's alpha again.
    escalate_to: str | None = None
    cascade_rest: tuple[Escalation, ...] = ()
    models_run: tuple[str, ...] = ()
    cascade_allowed: bool = True                 # False (the job's or its batch's ``cascade: false``): one model only
    # Place it in this plan whenever any model can take it (an infinite deferral penalty): replay
    # routes every job of a window at once, as a batch with no later tick would need.
    must_place: bool = False


@dataclass(frozen=True)
class ModelState:
    """A model of the fleet as the tick sees it now: live workers and what they measured."""

    name: str
    live_workers: int                  # worker processes (slots) with a fresh heartbeat
    backlog_jobs: int                  # already queued or running on it
    tokens_per_s: float | None = None  # measured generation speed (None before any job finished)
    mean_latency_s: float | None = None  # measured seconds per job


@dataclass(frozen=True)
class Assignment:
    """A job's model for this tick. With ``cascade``, the model's answer is judged before it is
    accepted, and a weak one escalates to the next model of the cascade (the job returns to the
    window with that model pinned); ``predicted_quality`` and ``predicted_cost_usd`` are then the
    whole cascade's expectations (every model run counted), ``reason`` says why."""

    job_id: str
    model: str
    predicted_quality: float
    predicted_cost_usd: float
    reason: str
    exploring: bool = False   # sent to try a little-tried model: no promise, so the promise check skips it
    late: bool = False        # no model can meet its deadline: sent to the fastest eligible one
    cascade: tuple[Escalation, ...] = ()   # () = the answer is accepted as it is


class Ending(str, enum.Enum):
    """How a deferral may end a job instead of leaving it for a later tick."""

    EXPIRED = "expired"   # it can no longer be served in time (deadline passed, or expire on a miss)
    FAILED = "failed"     # no model of the fleet can ever serve it as submitted


@dataclass(frozen=True)
class Deferral:
    job_id: str
    reason: str
    ending: Ending | None = None   # None: the job waits for a later tick


@dataclass(frozen=True)
class Plan:
    tick_id: str
    created_at: dt.datetime
    policy: str
    assignments: tuple[Assignment, ...]
    deferrals: tuple[Deferral, ...]
    objective_usd: float = 0.0
    lower_bound_usd: float = 0.0
    notes: tuple[str, ...] = field(default=())
    solver: str = ""            # the optimizer method that solved the window ("exact", "fast"); "" when none ran
    solver_status: str = ""     # its SolveStatus value: optimal, feasible or relaxed
    solve_s: float = 0.0        # seconds the optimizer took

    def by_model(self) -> dict[str, list[Assignment]]:
        grouped: dict[str, list[Assignment]] = defaultdict(list)
        for assignment in self.assignments:
            grouped[assignment.model].append(assignment)
        return dict(grouped)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class Dispatch:
    """One message to publish: a micro-batch of a plan's jobs for one model."""

    dispatch_id: str
    model: str
    job_ids: tuple[str, ...]


def plan_dispatches(plan: Plan, fleet: Fleet) -> list[Dispatch]:
    """Split each model's assignments into micro-batches of its ``max_batch_jobs``."""
    dispatches = []
    for model, assignments in plan.by_model().items():
        size = fleet.get(model).max_batch_jobs
        job_ids = [a.job_id for a in assignments]
        for start in range(0, len(job_ids), size):
            dispatches.append(Dispatch(str(uuid.uuid4()), model, tuple(job_ids[start:start + size])))
    return dispatches
