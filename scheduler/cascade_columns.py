"""The optimizer's columns when the policy plans cascades: the fleet's models, then one column per
cascade strategy (scheduler/cascade.py) with its per-job expected cost and quality, and the
assignment a chosen strategy column becomes. Used by scheduler/policy.py; the optimizer itself
knows nothing of cascades.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.cascade import CascadeModel
from scheduler.estimates import WindowEstimates
from scheduler.learning.exploration import NOT_PINNED
from scheduler.plan import Assignment, Escalation, WindowJob


@dataclass(frozen=True)
class OptimizerColumns:
    """The optimizer's columns: the M fleet models, then any cascade strategies."""

    cost_usd: np.ndarray       # (N, M + S) expected cost
    p_success: np.ndarray      # (N, M + S) expected quality
    capacity: np.ndarray       # (M,) free slots per fleet model: the optimizer's capacity rows
    eligible: np.ndarray       # (N, M + S)
    escalate_p: np.ndarray | None = None   # (N, S) the chance a cascade column's second model runs
    capacity_row: np.ndarray | None = None  # (M + S,) the model whose slot each column takes; None: its own

    @property
    def num_cascades(self) -> int:
        return 0 if self.escalate_p is None else int(self.escalate_p.shape[1])


def with_cascades(columns: OptimizerColumns, cascade: CascadeModel, jobs: Sequence[WindowJob], est: WindowEstimates,
                   pinned: np.ndarray) -> OptimizerColumns:
    """``columns`` plus one column per cascade strategy (scheduler/cascade.py): expected cost (each
    of its models' cost times the chance it runs), expected final quality. A strategy is offered to
    a job only where each of its models is eligible for it on its own, all of them together fit its
    cost caps, it has no deadline (escalations run in later ticks) and it is not exploring. A
    strategy takes a slot of its first model now, the slot that model's direct column takes, so
    the two share that model's capacity row (an escalation competes for capacity when it comes
    back)."""
    if len(cascade.model_names) != est.cost_usd.shape[1] or not cascade.strategies:
        return columns
    quality, runs = cascade.estimate(est.p_success)
    models = [list(strategy.models) for strategy in cascade.strategies]
    cost = np.column_stack([(run * est.cost_usd[:, ms]).sum(axis=1) for run, ms in zip(runs, models, strict=True)])
    worst_cost = np.column_stack([est.cost_usd[:, ms].sum(axis=1) for ms in models])
    all_eligible = np.column_stack([columns.eligible[:, ms].all(axis=1) for ms in models])
    first = np.array([strategy.first for strategy in cascade.strategies])
    floor = np.array([job.min_quality if job.min_quality is not None else 0.0 for job in jobs])
    cap = np.array([min(np.inf if limit is None else limit for limit in
                        (job.max_cost_usd, job.batch_budget_left_usd, job.tenant_budget_left_usd)) for job in jobs])
    plain = np.array([job.deadline_at is None and job.cascade_allowed and job.escalate_to is None
                      for job in jobs]) & (pinned == NOT_PINNED)
    eligible = all_eligible & plain[:, None] & (quality >= floor[:, None]) & (worst_cost <= cap[:, None])
    escalate = np.column_stack([run[:, 1] for run in runs])
    return OptimizerColumns(np.hstack([columns.cost_usd, cost]), np.hstack([columns.p_success, np.clip(quality, 0.0, 1.0)]),
                            columns.capacity, np.hstack([columns.eligible, eligible]), escalate,
                            capacity_row=np.concatenate([np.arange(columns.capacity.size), first]))


def cascade_assignment(job: WindowJob, i: int, s: int, columns: OptimizerColumns, cascade: CascadeModel | None,
                        names: Sequence[str], constraint: str) -> Assignment:
    assert cascade is not None and columns.escalate_p is not None
    strategy = cascade.strategies[s]
    j = len(names) + s
    quality, cost = float(columns.p_success[i, j]), float(columns.cost_usd[i, j])
    reason = (f"cascade: {cascade.describe(s, names)} (expected p={quality:.2f}, P(second model runs)="
              f"{columns.escalate_p[i, s]:.2f}, est ${cost:.6f}); cheapest plan meeting {constraint} within capacity")
    steps = tuple(Escalation(t, names[nxt]) for nxt, t in zip(strategy.models[1:], strategy.accept_at, strict=True))
    return Assignment(job.id, names[strategy.first], quality, cost, reason, cascade=steps)
