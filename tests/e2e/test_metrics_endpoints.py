"""Every /metrics endpoint of a running stack (API, scheduler, worker as separate processes on
Postgres + Redis) is scraped over HTTP before and after real jobs, and the numbers moved."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.client import SwitchyardClient
from scheduler.storage import Database, TenantStore, utcnow
from tests.conftest import free_port
from tests.e2e.faultkit import echo_fleet, fault_settings, start_stack, wait_all_final, wait_for

pytestmark = pytest.mark.e2e
JOBS = 4
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def try_scrape(url: str) -> Samples | None:
    try:
        return scrape(url)
    except httpx.ConnectError:
        return None


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_api_scheduler_and_worker_metrics_move_after_real_jobs(pg_db: Database, redis_url: str,
                                                               tmp_path: Path) -> None:
    scheduler_port, worker_port = free_port(), free_port()
    settings = fault_settings(pg_db.url, redis_url, fleet_file=echo_fleet(tmp_path, delay_s=0.01),
                              scheduler_metrics_port=scheduler_port, worker_metrics_port=worker_port,
                              exploration_target_labels=0)
    stack = start_stack(settings, tmp_path, worker_models=["echo"])
    endpoints = {"api": f"{stack.api_url}/metrics", "scheduler": f"http://127.0.0.1:{scheduler_port}/metrics",
                 "worker": f"http://127.0.0.1:{worker_port}/metrics"}
    try:
        TenantStore(pg_db).set_tenant("local", utcnow(), max_spend_usd=1.0)
        # The stack is ready once the API answers and the worker reported in; the scheduler may start later.
        before = {name: wait_for(lambda url=url: try_scrape(url), 60, f"{name}'s /metrics")
                  for name, url in endpoints.items()}
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            batch = api.submit_batch({"max_cost_usd": 0.5, "jobs": [
                {"prompt": f"Paris is the capital of France ({i})", "reference": "Paris", "max_tokens": 16}
                for i in range(JOBS)]})
            jobs = wait_all_final(api, batch["job_ids"], timeout_s=120)
        assert {job["status"] for job in jobs.values()} == {"succeeded"}
        # The store's gauges are read at scrape time (cached a few seconds): wait for the graded jobs.
        after_scheduler = wait_for(lambda: (lambda s: s if get(s, "switchyard_graded_jobs", model="echo") >= JOBS
                                            else None)(scrape(endpoints["scheduler"])), 30, "the graded jobs")
        after = {name: scrape(url) for name, url in endpoints.items() if name != "scheduler"}
        after["scheduler"] = after_scheduler
    finally:
        stack.stop()

    def moved(process: str, name: str, **labels: str) -> float:
        return get(after[process], name, **labels) - get(before[process], name, **labels)

    # The API: the batch submission and the polls, by route template.
    assert moved("api", "switchyard_api_requests_total", method="POST", route="/v1/batches", status="200") \
        + moved("api", "switchyard_api_requests_total", method="POST", route="/v1/batches", status="201") == 1
    assert moved("api", "switchyard_api_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= JOBS
    assert moved("api", "switchyard_api_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}") >= JOBS

    # The scheduler: ticks and their stages, the jobs it dispatched, leadership, the fleet, spend and quality.
    assert moved("scheduler", "switchyard_scheduler_ticks_total") >= 1
    for stage in ("recover", "claim", "plan", "commit", "publish"):
        assert moved("scheduler", "switchyard_scheduler_tick_stage_seconds_count", stage=stage) >= 1
    assert moved("scheduler", "switchyard_scheduler_assigned_jobs_total", model="echo", kind="planned") == JOBS
    assert moved("scheduler", "switchyard_scheduler_published_tasks_total", model="echo") >= 1
    assert moved("scheduler", "switchyard_scheduler_promised_quality_total", model="echo") > 0
    assert get(after["scheduler"], "switchyard_scheduler_leader") == 1
    assert get(after["scheduler"], "switchyard_model_live_slots", model="echo") == 1
    assert get(after["scheduler"], "switchyard_tenant_spend_cap_usd", tenant="local") == 1.0
    assert moved("scheduler", "switchyard_tenant_spent_usd", tenant="local") > 0
    assert get(after["scheduler"], "switchyard_graded_realised_quality_ratio", model="echo") == 1.0
    assert get(after["scheduler"], "switchyard_predictor_info", version="prior") == 1

    # The worker: what it ran.
    assert moved("worker", "switchyard_worker_jobs_succeeded_total", model="echo") == JOBS
    assert moved("worker", "switchyard_worker_output_tokens_total", model="echo") >= JOBS
    assert moved("worker", "switchyard_worker_job_latency_seconds_count", model="echo") == JOBS
    assert moved("worker", "switchyard_worker_cost_usd_total", model="echo") > 0
    assert get(after["worker"], "switchyard_worker_tokens_per_second", model="echo") > 0
    assert get(after["worker"], "switchyard_worker_last_heartbeat_timestamp_seconds", model="echo") > 0
