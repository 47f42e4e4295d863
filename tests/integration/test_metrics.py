"""Metrics on real Postgres: the API's /metrics after real requests, and the scheduler's after a real
tick and a graded result (spend against caps, promised against realised quality)."""
from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scheduler.api.app import create_app
from scheduler.fleet import Fleet
from scheduler.loop import Scheduler, default_policy
from scheduler.metrics import STORE_CACHE_S, SchedulerMetrics, exposition, new_registry
from scheduler.storage import Database, ResultStore, TenantStore, utcnow
from scheduler.storage.monitoring import MonitoringStore
from scheduler.storage.results import Outcome
from tests.conftest import bearer, create_api_key, make_settings
from tests.integration.tickkit import register_workers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_the_api_counts_requests_by_route_template_and_status(pg_db: Database, fleet: Fleet) -> None:
    app = create_app(make_settings(pg_db.url), pg_db, fleet)
    with TestClient(app, headers=bearer(create_api_key(pg_db, "default"))) as client:
        before = parse(client.get("/metrics").text)
        job = client.post("/v1/jobs", json={"prompt": "What is 2 + 2?"}).json()
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
        assert client.get("/v1/jobs/no-such-job").status_code == 404
        after = parse(client.get("/metrics").text)

    def moved(name: str, **labels: str) -> float:
        return (get(after, name, **labels) or 0.0) - (get(before, name, **labels) or 0.0)

    requests = "switchyard_api_requests_total"
    assert moved(requests, method="POST", route="/v1/jobs", status="201") == 1
    assert moved(requests, method="GET", route="/v1/jobs/{job_id}", status="200") == 1
    assert moved(requests, method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert moved("switchyard_api_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}") == 2
    assert not [key for key in after if job["id"] in str(key) or "no-such-job" in str(key)]   # never a raw path


def test_the_scheduler_reports_its_tick_spend_against_caps_and_quality(pg_db: Database, fleet: Fleet) -> None:
    settings = make_settings(pg_db.url)
    now = utcnow()
    TenantStore(pg_db).set_tenant("acme", now, max_spend_usd=2.0)
    register_workers(pg_db, fleet.names, now)
    app = create_app(settings, pg_db, fleet)
    with TestClient(app, headers=bearer(create_api_key(pg_db, "acme"))) as client:
        batch = client.post("/v1/batches", json={
            "max_cost_usd": 0.5, "jobs": [{"prompt": f"Capital of France, take {i}?", "reference": "Paris"}
                                          for i in range(3)]})
    assert batch.status_code in (200, 201), batch.text
    batch_id = batch.json()["id"]

    registry = new_registry()
    metrics = SchedulerMetrics(registry, fleet.names, MonitoringStore(pg_db))
    scheduler = Scheduler(settings, pg_db, fleet, default_policy(fleet, settings), None, metrics=metrics)
    scrape = lambda: parse(exposition(registry)[0].decode())  # noqa: E731
    assert get(scrape(), "switchyard_jobs", status="pending") is None   # a standby reads nothing from the store

    metrics.set_leading(1)
    report = scheduler.tick()
    assert len(report.plan.assignments) == 3
    seen = scrape()
    assigned = sum(get(seen, "switchyard_scheduler_assigned_jobs_total", model=m, kind=k) or 0
                   for m in fleet.names for k in ("planned", "exploring", "late"))
    assert assigned == 3
    assert get(seen, "switchyard_scheduler_ticks_total") == 1
    assert get(seen, "switchyard_scheduler_tick_stage_seconds_count", stage="commit") == 1
    assert get(seen, "switchyard_scheduler_solver_seconds_count", solver="exact") == 1
    assert all(get(seen, "switchyard_model_live_slots", model=m) == 1 for m in fleet.names)
    assert get(seen, "switchyard_jobs", status="queued") == 3
    reserved = sum(a.predicted_cost_usd for a in report.plan.assignments)
    assert abs((get(seen, "switchyard_tenant_reserved_usd", tenant="acme") or 0) - reserved) < 1e-12
    assert get(seen, "switchyard_tenant_spend_cap_usd", tenant="acme") == 2.0
    assert get(seen, "switchyard_batch_spend_cap_usd", batch=batch_id, tenant="acme") == 0.5
    assert get(seen, "switchyard_batch_spent_usd", batch=batch_id, tenant="acme") == 0.0

    # A worker runs one job and writes a right answer: it is graded, spent, and no longer reserved.
    first = report.plan.assignments[0]
    dispatch = {a.job_id: d.dispatch_id for d in report.dispatches for a in report.plan.assignments
                if a.job_id in d.job_ids}[first.job_id]
    results = ResultStore(pg_db)
    claimed = results.claim_batch([first.job_id], dispatch, first.model, "w1", utcnow(), 60.0)
    assert len(claimed) == 1
    results.record([(claimed[0], Outcome("Paris.", "stop", 10, 2, 0.5, 0.001))], utcnow(), 3)
    time.sleep(STORE_CACHE_S + 0.1)   # past the scrape cache
    seen = scrape()
    assert get(seen, "switchyard_tenant_spent_usd", tenant="acme") == 0.001
    assert abs((get(seen, "switchyard_tenant_reserved_usd", tenant="acme") or 0)
               - (reserved - first.predicted_cost_usd)) < 1e-12
    assert get(seen, "switchyard_graded_jobs", model=first.model) == 1
    assert get(seen, "switchyard_graded_realised_quality_ratio", model=first.model) == 1.0
    assert abs((get(seen, "switchyard_graded_promised_quality_ratio", model=first.model) or 0)
               - first.predicted_quality) < 1e-9
