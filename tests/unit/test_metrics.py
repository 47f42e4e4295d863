"""The metrics on plain values: what a tick, a micro-batch and a request record, with bounded labels."""
from __future__ import annotations

import datetime as dt

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import scheduler.policy as policy
from scheduler.api.request_metrics import RequestMetrics
from scheduler.metrics import (
    ApiMetrics, SchedulerMetrics, WorkerMetrics, deferral_kind, exposition, new_registry,
)
from scheduler.plan import Assignment, Deferral, Dispatch, Ending, ModelState, Plan
from scheduler.storage.window import LeaseRecovery
from scheduler.tick import PublishReport, TickReport
from workers.runner import FAILURE_KINDS, failure_kind
from workers.timeout import JobTimeout

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, read back through the text format Prometheus scrapes."""
    body, _ = exposition(registry)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, tuple(sorted(labels.items()))))


def test_every_deferral_reason_of_the_policy_has_a_kind() -> None:
    reasons = {name: text for name, text in vars(policy).items() if name.endswith("_REASON")}
    assert len(reasons) >= 7
    kinds = {name: deferral_kind(Deferral("j", text)) for name, text in reasons.items()}
    assert "other" not in kinds.values(), kinds
    assert len(set(kinds.values())) == len(kinds)      # no two reasons share a kind
    assert deferral_kind(Deferral("j", "some reason the metrics do not know")) == "other"
    assert deferral_kind(Deferral("j", "anything", Ending.EXPIRED)) == "expired"
    assert deferral_kind(Deferral("j", policy.NEVER_PREFIX + " x", Ending.FAILED)) == "never_servable"


def tick_report() -> TickReport:
    plan = Plan("t1", NOW, "test", assignments=(
        Assignment("a", "small", 0.6, 0.001, "r"), Assignment("b", "small", 0.8, 0.001, "r"),
        Assignment("c", "big", 0.9, 0.01, "r", exploring=True), Assignment("d", "big", 0.5, 0.01, "r", late=True)),
        deferrals=(Deferral("e", policy.CAPACITY_REASON), Deferral("f", policy.CAPACITY_REASON),
                   Deferral("g", policy.TENANT_BUDGET_REASON), Deferral("h", "gone", Ending.EXPIRED)),
        objective_usd=2.0, lower_bound_usd=1.5, solver="exact", solver_status="optimal", solve_s=0.02)
    dispatches = [Dispatch("d1", "small", ("a", "b")), Dispatch("d2", "big", ("c",)), Dispatch("d3", "big", ("d",))]
    publish = PublishReport(published=2, failed=[(dispatches[2], "broker down")])
    states = [ModelState("small", live_workers=2, backlog_jobs=5, tokens_per_s=40.0), ModelState("big", 1, 0)]
    stage_s = {"recover": 0.001, "claim": 0.002, "plan": 0.03, "commit": 0.004, "publish": 0.005}
    return TickReport(plan, LeaseRecovery(requeued=3, failed=1, expired=2), states, dispatches, publish,
                      dry_run=False, stage_s=stage_s, window_jobs=8)


def test_a_tick_moves_the_scheduler_metrics() -> None:
    registry = new_registry()
    metrics = SchedulerMetrics(registry, ["small", "big"])
    metrics.set_leading(7)
    metrics.observe_tick(tick_report())
    metrics.observe_learning("v3", {"small": 12, "big": 0}, 0.05)

    def v(name: str, **labels: str) -> float | None:
        return value(registry, name, **labels)

    assert v("switchyard_scheduler_ticks_total") == 1
    assert v("switchyard_scheduler_tick_stage_seconds_count", stage="plan") == 1
    assert v("switchyard_scheduler_tick_stage_seconds_sum", stage="plan") == 0.03
    assert abs((v("switchyard_scheduler_tick_duration_seconds_sum") or 0) - 0.042) < 1e-9
    assert v("switchyard_scheduler_window_jobs") == 8
    assert v("switchyard_scheduler_assigned_jobs_total", model="small", kind="planned") == 2
    assert v("switchyard_scheduler_assigned_jobs_total", model="big", kind="exploring") == 1
    assert v("switchyard_scheduler_assigned_jobs_total", model="big", kind="late") == 1
    assert v("switchyard_scheduler_promised_quality_total", model="small") == 1.4   # 0.6 + 0.8
    assert v("switchyard_scheduler_promised_quality_total", model="big") == 0.5     # the explorer promised nothing
    assert v("switchyard_scheduler_deferred_jobs_total", reason="capacity") == 2
    assert v("switchyard_scheduler_window_deferred_jobs", reason="tenant_budget") == 1
    assert v("switchyard_scheduler_deferred_jobs_total", reason="expired") == 1
    assert v("switchyard_scheduler_solver_seconds_count", solver="exact") == 1
    assert v("switchyard_scheduler_solves_total", solver="exact", status="optimal") == 1
    assert v("switchyard_scheduler_plan_gap_usd") == 0.5
    assert v("switchyard_scheduler_plan_gap_ratio") == 0.25
    assert v("switchyard_scheduler_recovered_jobs_total", outcome="requeued") == 3
    assert v("switchyard_scheduler_recovered_jobs_total", outcome="expired") == 2
    assert v("switchyard_scheduler_published_tasks_total", model="big") == 1
    assert v("switchyard_scheduler_publish_failures_total", model="big") == 1
    assert v("switchyard_model_live_slots", model="small") == 2
    assert v("switchyard_model_backlog_jobs", model="small") == 5
    assert v("switchyard_model_tokens_per_second", model="small") == 40
    assert v("switchyard_model_tokens_per_second", model="big") is None   # nothing measured yet
    assert v("switchyard_scheduler_leader") == 1 and v("switchyard_scheduler_leader_epoch") == 7
    assert v("switchyard_predictor_info", version="v3") == 1
    assert v("switchyard_predictor_labels", model="small") == 12
    assert v("switchyard_scheduler_promise_margin_ratio") == 0.05

    # A second tick adds to the counters and replaces the last window's gauges.
    metrics.observe_tick(TickReport(Plan("t2", NOW, "test", (), ()), LeaseRecovery(0, 0), [], [], None, False,
                                    {"plan": 0.01}, window_jobs=0))
    assert v("switchyard_scheduler_ticks_total") == 2
    assert v("switchyard_scheduler_window_deferred_jobs", reason="capacity") is None
    assert v("switchyard_scheduler_plan_gap_usd") == 0.5   # no solve this tick: the last one's stays

    # Standing by, the last tick's state is withdrawn: only the leader's is current.
    metrics.set_leading(None)
    assert v("switchyard_scheduler_leader") == 0
    assert v("switchyard_model_live_slots", model="small") is None
    assert v("switchyard_scheduler_ticks_total") == 2


def test_a_micro_batch_moves_the_worker_metrics() -> None:
    registry = new_registry()
    running = [3]
    metrics = WorkerMetrics(registry, "small", FAILURE_KINDS, tokens_per_s=lambda: 42.0, running_jobs=lambda: running[0])
    metrics.observe_batch(latencies_s=[0.5, 1.5], failures={"timeout": 1}, skipped=1, input_tokens=30,
                          output_tokens=20, cost_usd=0.002)
    metrics.observe_heartbeat(ok=False)

    def v(name: str, **labels: str) -> float | None:
        return value(registry, name, model="small", **labels)

    assert v("switchyard_worker_jobs_succeeded_total") == 2
    assert v("switchyard_worker_jobs_failed_total", reason="timeout") == 1
    assert v("switchyard_worker_jobs_failed_total", reason="engine_error") == 0   # every kind is there from the start
    assert v("switchyard_worker_jobs_skipped_total") == 1
    assert v("switchyard_worker_output_tokens_total") == 20
    assert v("switchyard_worker_input_tokens_total") == 30
    assert v("switchyard_worker_generation_seconds_total") == 2.0
    assert v("switchyard_worker_cost_usd_total") == 0.002
    assert v("switchyard_worker_job_latency_seconds_count") == 2
    assert v("switchyard_worker_job_latency_seconds_bucket", le="1.0") == 1
    assert v("switchyard_worker_tokens_per_second") == 42
    assert v("switchyard_worker_running_jobs") == 3
    assert v("switchyard_worker_heartbeat_failures_total") == 1
    assert value(registry, "process_cpu_seconds_total") is not None   # the standard process metrics too


def test_failure_kinds_are_the_bounded_set() -> None:
    from scheduler.errors import PermanentJobError

    assert failure_kind(JobTimeout("slow")) == "timeout"
    assert failure_kind(PermanentJobError("too long")) == "rejected"
    assert failure_kind(RuntimeError("engine died")) == "engine_error"
    assert {"timeout", "rejected", "engine_error", "storage_refused"} == set(FAILURE_KINDS)


def test_requests_are_labelled_by_route_template_never_the_raw_path() -> None:
    app = FastAPI()
    metrics = ApiMetrics(new_registry())
    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.get("/items/{item_id}")
    def item(item_id: str) -> dict[str, str]:
        if item_id == "boom":
            raise RuntimeError("a bug")
        return {"id": item_id}

    with TestClient(app, raise_server_exceptions=False) as client:
        for item_id in ("1", "2", "3"):
            assert client.get(f"/items/{item_id}").status_code == 200
        assert client.get("/items/boom").status_code == 500
        assert client.get("/no/such/path").status_code == 404
        assert client.request("BREW", "/items/1").status_code == 405

    found = samples(metrics.registry)
    requests = {labels: v for (name, labels), v in found.items() if name == "switchyard_api_requests_total"}
    assert requests == {
        (("method", "GET"), ("route", "/items/{item_id}"), ("status", "200")): 3,
        (("method", "GET"), ("route", "/items/{item_id}"), ("status", "500")): 1,
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 1,
        (("method", "other"), ("route", "/items/{item_id}"), ("status", "405")): 1,
    }
    assert found[("switchyard_api_request_duration_seconds_count",
                  (("method", "GET"), ("route", "/items/{item_id}")))] == 4
