"""The policy and a job back from a cascade's review (``WindowJob.escalate_to``): it runs that model
only, carries the rest of its cascade, and does not count towards its batch's alpha again.

Same two-model fleet as tests/unit/test_policy.py: `slow` is cheap (p 0.4), `fast` costs 100x
more per second (p 0.8); with the fleet priors as predictions every decision follows from them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from scheduler.fleet import Fleet
from scheduler.learning.exploration import Exploration, Feedback
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.plan import Ending, Escalation, ModelState, Plan, WindowJob
from scheduler.policy import OptimizingPolicy
from tests.unit.test_policy import FLEET, JOB, NOW

REST = (Escalation(accept_at=0.7, next_model="slow"),)


def job(name: str, **fields: object) -> WindowJob:
    return replace(JOB, id=name, **fields)  # type: ignore[arg-type]


def plan(jobs: Sequence[WindowJob], live: Sequence[str] = ("slow", "fast"), fleet: Fleet = FLEET,
         exploration: Exploration | None = None) -> Plan:
    states = [ModelState(spec.name, live_workers=int(spec.name in live), backlog_jobs=0) for spec in fleet.models]
    policy = OptimizingPolicy(fleet, FleetPredictor(fleet, None, None), horizon_s=86_400, exploration=exploration,
                              feedback=Feedback(label_counts=(0,) * len(fleet.models)), rng=np.random.default_rng(0))
    return policy.plan(jobs, states, NOW, tick_id="t")


def test_an_escalated_job_runs_only_its_next_model_and_keeps_the_rest_of_its_cascade() -> None:
    escalated = job("e", escalate_to="fast", cascade_rest=REST, models_run=("slow",))
    [assignment] = plan([escalated]).assignments
    # fast, though slow is far cheaper and eligible
    assert (assignment.model, assignment.cascade, assignment.exploring) == ("fast", REST, False)
    assert assignment.reason.startswith("escalation: the answer of slow was judged too weak, so its cascade runs "
                                        "fast; then slow while still weak: fast p=0.80")


def test_an_escalated_job_does_not_count_towards_its_batch_alpha_again() -> None:
    # Batch mean >= 0.6: the two fresh jobs need one slow (0.4) and one fast (0.8). Were the
    # escalated job (on slow, p 0.4) counted, both fresh jobs would have to go to fast.
    fresh = [job(f"b{i}", batch_id="b", batch_alpha=0.6) for i in range(2)]
    escalated = job("e", batch_id="b", batch_alpha=0.6, escalate_to="slow", models_run=("fast",))
    placed = {a.job_id: a.model for a in plan([*fresh, escalated]).assignments}
    assert placed["e"] == "slow"
    assert sorted(placed[j.id] for j in fresh) == ["fast", "slow"]


def test_an_escalation_whose_model_has_no_worker_waits_and_says_why() -> None:
    result = plan([job("e", escalate_to="fast")], live=("slow",))
    assert result.assignments == ()
    [waiting] = result.deferrals
    assert waiting.ending is None
    assert waiting.reason == "waiting: its escalation must run on fast, and no live worker hosts it"


def test_an_escalation_over_its_cost_cap_waits_and_says_why() -> None:
    [waiting] = plan([job("e", escalate_to="fast", max_cost_usd=0.01)]).deferrals   # fast costs $0.032
    assert waiting.ending is None and waiting.reason.startswith("waiting: its escalation must run on fast, and "
                                                                "max_cost_usd")


def test_an_escalation_to_a_model_gone_from_the_fleet_ends_so_the_best_answer_is_accepted() -> None:
    [ended] = plan([job("e", escalate_to="retired")]).deferrals
    # The window store turns an escalated job's ending into a review that accepts its best answer.
    assert ended.ending is Ending.FAILED and "retired is no longer in the fleet" in ended.reason


def test_a_job_that_may_not_cascade_gets_no_cascade() -> None:
    [assignment] = plan([job("e", escalate_to="fast", cascade_rest=REST, cascade_allowed=False)]).assignments
    assert (assignment.model, assignment.cascade) == ("fast", ())


def test_escalations_are_never_pinned_to_explore() -> None:
    jobs = [job(f"e{i}", escalate_to="slow") for i in range(20)]
    result = plan(jobs, exploration=Exploration(budget_fraction=1.0, target_labels=1000))
    assert {a.model for a in result.assignments} == {"slow"}
    assert not any(a.exploring for a in result.assignments)
    # the same jobs fresh are explored (so the test would see pinning)
    fresh = plan([job(f"f{i}") for i in range(20)], exploration=Exploration(budget_fraction=1.0, target_labels=1000))
    assert any(a.exploring for a in fresh.assignments)
