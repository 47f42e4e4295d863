"""A worker in Celery's solo pool (how GPU/vLLM workers run) loads its model, reports in, runs
jobs and leaves cleanly, on real Postgres + Redis with the real SmolLM2 model."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from scheduler.client import SwitchyardClient
from scheduler.storage import Database
from tests.e2e.faultkit import account, fault_settings, start_stack, wait_all_final, wait_for

pytestmark = pytest.mark.e2e


def test_solo_pool_worker_runs_jobs_and_leaves_cleanly(pg_db: Database, redis_url: str, tmp_path: Path) -> None:
    stack = start_stack(fault_settings(pg_db.url, redis_url), tmp_path, worker_models=[])
    try:
        worker = stack.spawn("worker-solo", ["worker", "--model", "smollm2-135m", "--pool", "solo"])
        with SwitchyardClient(stack.api_url, stack.api_key) as api:
            [beat] = wait_for(api.workers, 120, "the solo worker to report in")
            assert beat["pid"] == worker.pid  # the model lives in the worker's own process
            batch = api.submit_batch({"jobs": [{"prompt": f"Say the number {i}.", "max_tokens": 12}
                                               for i in range(3)]})
            jobs = wait_all_final(api, batch["job_ids"], timeout_s=180)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
            del stack.processes["worker-solo"]
            assert api.workers() == []  # it removed its heartbeat on the way out
    finally:
        stack.stop()
    assert account(jobs)["succeeded"] == 3
