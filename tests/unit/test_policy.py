"""The policy on plain values (no database): eligibility, budgets, urgency and deadlines.

Two self-hosted models: `slow` is cheap, `fast` costs 100x more per second but runs 20x faster.
With the fleet priors as predictions, every decision below follows from the numbers alone.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

import pytest

from scheduler.fleet import Fleet, ModelSpec
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.plan import Ending, ModelState, Plan, WindowJob
from scheduler.policy import (
    BATCH_BUDGET_REASON, CAPACITY_REASON, FAIR_SHARE_REASON, NEVER_PREFIX, TENANT_BUDGET_REASON, OptimizingPolicy,
)

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
SLOW = ModelSpec(name="slow", backend="llama_cpp", weights="path:/m/slow.gguf", usd_per_second=0.001,
                 tokens_per_second_prior=10.0, capacity_jobs=100, quality_prior=0.4)
FAST = ModelSpec(name="fast", backend="llama_cpp", weights="path:/m/fast.gguf", usd_per_second=0.1,
                 tokens_per_second_prior=200.0, capacity_jobs=100, quality_prior=0.8)
FLEET = Fleet(models=(SLOW, FAST))
# A job of 64 output tokens: 6.4 s on slow ($0.0064), 0.32 s on fast ($0.032).
JOB = WindowJob(id="j", batch_id=None, prompt_text="a question", max_tokens=64, min_quality=None,
                deadline_at=None, allowed_models=None, max_cost_usd=None, batch_alpha=None,
                created_at=NOW, attempts=0)


def job(name: str, **fields: object) -> WindowJob:
    return replace(JOB, id=name, **fields)  # type: ignore[arg-type]


def plan(jobs: Sequence[WindowJob], slots: int = 100) -> Plan:
    """One tick with a live worker for each model and room for ``slots`` jobs on each."""
    fleet = Fleet(models=tuple(replace_spec(spec, capacity_jobs=slots) for spec in FLEET.models))
    states = [ModelState(spec.name, live_workers=1, backlog_jobs=0) for spec in fleet.models]
    policy = OptimizingPolicy(fleet, FleetPredictor(fleet, None, None), horizon_s=86_400)
    return policy.plan(jobs, states, NOW, tick_id="t")


def replace_spec(spec: ModelSpec, **fields: object) -> ModelSpec:
    return spec.model_copy(update=fields)


def placed(result: Plan) -> dict[str, str]:
    return {a.job_id: a.model for a in result.assignments}


def reasons(result: Plan) -> dict[str, str]:
    return {d.job_id: d.reason for d in result.deferrals}


def test_the_cheapest_eligible_model_takes_a_job_without_constraints() -> None:
    assert placed(plan([job("a")])) == {"a": "slow"}


def test_a_floor_or_an_allow_list_moves_the_job() -> None:
    result = plan([job("floor", min_quality=0.6), job("pinned", allowed_models=("fast",))])
    assert placed(result) == {"floor": "fast", "pinned": "fast"}


def test_a_batch_alpha_mixes_models_at_least_cost() -> None:
    # Mean p >= 0.6 over four jobs (0.4 on slow, 0.8 on fast): two must go to fast, no more.
    result = plan([job(f"b{i}", batch_id="b", batch_alpha=0.6) for i in range(4)])
    assert sorted(placed(result).values()) == ["fast", "fast", "slow", "slow"]


def test_a_job_no_model_can_ever_afford_fails_at_once() -> None:
    [ended] = plan([job("cheap", max_cost_usd=1e-9)]).deferrals
    assert ended.ending is Ending.FAILED and ended.reason.startswith(NEVER_PREFIX)


def test_a_cap_below_the_cheap_model_but_above_a_one_token_answer_waits() -> None:
    # $0.005 is below slow's $0.0064 for this answer, yet a shorter answer could fit: not hopeless.
    [waiting] = plan([job("capped", max_cost_usd=0.005, allowed_models=("slow",))]).deferrals
    assert waiting.ending is None and "max_cost_usd" in waiting.reason


def test_the_oldest_job_wins_the_last_slot() -> None:
    old = job("old", created_at=NOW - dt.timedelta(minutes=30))
    result = plan([job("new"), old], slots=0)
    assert placed(result) == {}
    result = plan([job("new", allowed_models=("slow",)), replace(old, allowed_models=("slow",))], slots=1)
    assert placed(result) == {"old": "slow"}
    assert reasons(result) == {"new": CAPACITY_REASON}


def test_a_near_deadline_wins_over_hours_of_waiting() -> None:
    waited = job("waited", created_at=NOW - dt.timedelta(hours=5), allowed_models=("fast",))
    due = job("due", deadline_at=NOW + dt.timedelta(seconds=30), allowed_models=("fast",))
    assert placed(plan([waited, due], slots=1)) == {"due": "fast"}


def test_a_deadline_only_the_fast_model_meets_goes_there() -> None:
    assert placed(plan([job("due", deadline_at=NOW + dt.timedelta(seconds=3))])) == {"due": "fast"}


def test_a_deadline_nobody_can_meet_runs_late_or_expires_as_asked() -> None:
    deadline = NOW + dt.timedelta(seconds=0.1)
    result = plan([job("late", deadline_at=deadline), job("expire", deadline_at=deadline, expire_on_deadline_miss=True),
                   job("gone", deadline_at=NOW - dt.timedelta(seconds=1))])
    assert placed(result) == {"late": "fast"}
    assert "WILL MISS DEADLINE" in result.assignments[0].reason
    assert {d.job_id: d.ending for d in result.deferrals} == {"expire": Ending.EXPIRED, "gone": Ending.EXPIRED}


@pytest.mark.parametrize(("field", "pool", "reason"), [
    ("batch_budget_left_usd", {"batch_id": "b"}, BATCH_BUDGET_REASON),
    ("tenant_budget_left_usd", {"tenant": "t"}, TENANT_BUDGET_REASON),
])
def test_a_budget_is_never_exceeded_and_the_oldest_jobs_keep_theirs(field: str, pool: dict[str, str],
                                                                     reason: str) -> None:
    budget = 2.5 * 0.0064   # two and a half jobs on slow
    jobs = [job(f"j{i}", created_at=NOW - dt.timedelta(seconds=10 - i), allowed_models=("slow",),
                **pool, **{field: budget}) for i in range(4)]   # type: ignore[arg-type]
    result = plan(jobs)
    assert placed(result) == {"j0": "slow", "j1": "slow"}
    assert sum(a.predicted_cost_usd for a in result.assignments) <= budget
    assert reasons(result) == {"j2": reason, "j3": reason}


def test_tenants_share_scarce_slots_by_weight() -> None:
    heavy = [job(f"h{i}", tenant="heavy", created_at=NOW - dt.timedelta(hours=1), allowed_models=("slow",))
             for i in range(10)]
    light = [job("l0", tenant="light", allowed_models=("slow",))]
    result = plan(heavy + light, slots=4)
    assert "l0" in placed(result) and len(placed(result)) == 4
    assert set(reasons(result).values()) == {FAIR_SHARE_REASON}
