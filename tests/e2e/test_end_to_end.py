"""The whole path on real parts: REST -> Postgres -> scheduler tick -> Celery over Redis ->
two real llama.cpp worker processes (SmolLM2-135M and Gemma-3-270M) -> results in Postgres."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from scheduler.client import SwitchyardClient
from scheduler.embedded import EmbeddedStack
from scheduler.storage import Database
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.e2e

FRANCE = "What is the capital of France?"


def test_submit_schedule_run_and_poll(pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(pg_db.url, redis_url, tick_interval_s=0.5, heartbeat_interval_s=1.0)
    with EmbeddedStack(settings, tmp_path / "logs", api_port=free_port()) as stack:
        stack.wait_ready(timeout_s=300)
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            assert {w["model"] for w in api.workers()} == {"smollm2-135m", "gemma-3-270m"}
            jobs = [
                {"prompt": FRANCE, "max_tokens": 32, "allowed_models": ["smollm2-135m"]},
                {"prompt": FRANCE, "max_tokens": 32, "allowed_models": ["gemma-3-270m"]},
                {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 24},
                {"prompt": "Name a primary colour.", "max_tokens": 24},
            ]
            batch = api.submit_batch({"name": "e2e", "jobs": jobs})
            batch_id = batch["id"]
            deadline = time.monotonic() + 300
            while not api.batch(batch_id)["done"]:
                stack.check_alive()
                assert time.monotonic() < deadline, api.batch(batch_id)
                time.sleep(0.5)
            results = {job_id: api.job(job_id) for job_id in batch["job_ids"]}
            jobs_done_by_heartbeat = _wait_for_heartbeats_to_report_work(api)
            batch_cost = api.batch(batch_id)["cost_usd"]

    by_order = [results[job_id] for job_id in batch["job_ids"]]
    for job in by_order:
        assert job["status"] == "succeeded", job
        assert job["result_text"].strip(), job
        assert job["input_tokens"] > 0 and job["output_tokens"] > 0
        assert job["cost_usd"] > 0 and job["latency_s"] > 0
        assert job["attempts"] == 1 and job["assignment_reason"]
    assert [job["assigned_model"] for job in by_order[:2]] == ["smollm2-135m", "gemma-3-270m"]
    for job in by_order[:2]:
        assert "paris" in job["result_text"].lower(), job["result_text"]
    assert batch_cost == pytest.approx(sum(job["cost_usd"] for job in by_order))
    assert jobs_done_by_heartbeat >= 1


def _wait_for_heartbeats_to_report_work(api: SwitchyardClient, timeout_s: float = 15.0) -> int:
    """Heartbeats are periodic, so the jobs a worker finished show up at its next beat, not at
    once: poll until one reports work (or give up and return what they say)."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs_done = sum(w["jobs_done"] for w in api.workers())
        if jobs_done >= 1 or time.monotonic() > deadline:
            return jobs_done
        time.sleep(0.25)
