"""Helpers for fault tests: a stack with short leases, service restarts, final accounting."""
from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

from scheduler.client import SwitchyardClient
from scheduler.embedded import EmbeddedStack
from scheduler.settings import Settings
from tests.conftest import free_port, make_settings

FINAL = {"succeeded", "failed", "cancelled", "expired"}


def fault_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    """Short leases and fast ticks, so recovery happens within seconds instead of minutes."""
    values: dict[str, object] = {"tick_interval_s": 0.5, "heartbeat_interval_s": 1.0, "run_lease_s": 4.0,
                                 "queue_lease_s": 8.0, "max_attempts": 3}
    return make_settings(database_url, redis_url, **(values | overrides))


def start_stack(settings: Settings, tmp_path: Path, worker_models: list[str]) -> EmbeddedStack:
    stack = EmbeddedStack(settings, tmp_path / "logs", api_port=free_port(), worker_models=worker_models)
    stack.start()
    stack.wait_ready(timeout_s=300)
    return stack


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def job_statuses(api: SwitchyardClient, job_ids: list[str]) -> dict[str, dict]:
    return {job_id: api.job(job_id) for job_id in job_ids}


def wait_all_final(api: SwitchyardClient, job_ids: list[str], timeout_s: float) -> dict[str, dict]:
    def finished() -> dict[str, dict] | None:
        jobs = job_statuses(api, job_ids)
        return jobs if all(j["status"] in FINAL for j in jobs.values()) else None

    return wait_for(finished, timeout_s, "every job to finish")


def account(jobs: dict[str, dict]) -> Counter[str]:
    """submitted = succeeded + failed (each failure with its reason); nothing left in flight."""
    counts = Counter(job["status"] for job in jobs.values())
    assert counts["succeeded"] + counts["failed"] == len(jobs), counts
    assert all(job["error"] for job in jobs.values() if job["status"] == "failed")
    assert all(job["result_text"] for job in jobs.values() if job["status"] == "succeeded")
    return counts


def kill_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal a worker and its pool children (it runs in its own process group)."""
    os.killpg(process.pid, signum)


def restart_redis() -> None:
    """Stop the machine's Redis (it keeps nothing on disk: every message is lost) and start it again."""
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], check=False,
                   capture_output=True)
    subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "ensure-services.sh")],
                   check=True, capture_output=True)


def postgres_cluster(action: str) -> None:
    for version in os.listdir("/etc/postgresql"):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
                       if action == "stop" else
                       ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                       check=True, capture_output=True)


def parent_pid(pid: int) -> int:
    # Field 4 of /proc/PID/stat; the command name (field 2) may hold spaces, so split after ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def stack_process_running(stack: EmbeddedStack, api: SwitchyardClient, job_ids: list[str]) -> str | None:
    """The name of the stack's worker whose pool process is running one of the jobs right now."""
    for job in (api.job(j) for j in job_ids):
        if job["status"] != "running" or not job["worker"]:
            continue
        pool_pid = int(job["worker"].rsplit(":", 1)[1])
        try:
            main_pid = parent_pid(pool_pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        for name, process in stack.processes.items():
            if process.pid == main_pid:
                return name
    return None
