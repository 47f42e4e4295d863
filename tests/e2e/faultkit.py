"""Helpers for fault tests: a stack with short leases, service restarts, final accounting."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg

from scheduler.client import SwitchyardClient
from scheduler.embedded import EmbeddedStack
from scheduler.settings import Settings
from scheduler.storage import Database
from scheduler.storage.leader import TICK_LOCK_KEY, current_leader
from tests.conftest import POSTGRES_ADMIN_DSN, free_port, make_settings

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


def echo_fleet(tmp_path: Path, name: str = "echo", max_batch_jobs: int = 32, delay_s: float = 0.0) -> Path:
    """A fleet of one echo model (workers/backends/echo.py): a worker that starts in a second and
    answers with the prompt, for faults whose subject is the scheduler, not a model."""
    path = tmp_path / "echo-fleet.toml"
    path.write_text(f'''
[[models]]
name = "{name}"
backend = "echo"
weights = "none"
usd_per_second = 0.000001
capacity_jobs = 64
max_batch_jobs = {max_batch_jobs}
tokens_per_second_prior = 1000.0

[models.options]
delay_s = {delay_s}
''')
    return path


@contextlib.contextmanager
def connections_refused(database_url: str) -> Iterator[None]:
    """The database refuses new connections and its open ones are terminated, for as long as the
    block runs (the other databases of the cluster are untouched)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                          "AND pid <> pg_backend_pid()", (name,))
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def terminate_leader_lock_connection(database_url: str) -> int:
    """Cut the connection that holds the tick's advisory lock; returns its backend pid."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (name, TICK_LOCK_KEY)).fetchone()
        assert row is not None, "no scheduler holds the tick lock"
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (row[0],))
        return int(row[0])


def wait_for_tick_after(db: Database, moment: dt.datetime, timeout_s: float) -> float:
    """Seconds until the leader records a tick later than ``moment`` (fails after timeout_s)."""
    start = time.monotonic()

    def ticked() -> bool:
        try:
            leader = current_leader(db)
        except Exception:  # noqa: BLE001 - the database may still be coming back
            return False
        return leader is not None and leader.last_tick_at is not None and leader.last_tick_at > moment

    wait_for(ticked, timeout_s, f"a tick within {timeout_s:.0f}s of {moment.isoformat()}", interval_s=0.1)
    return time.monotonic() - start
