"""100,000 jobs through the whole system while it is hurt: nothing lost, nothing written twice.

    python benchmarks/load_faults.py                      # 100k jobs, about 10-15 minutes here
    python benchmarks/load_faults.py --jobs 20000         # a quicker run

On this machine's own Postgres and Redis (loopback only; a fresh database, Redis database 14),
it starts the real stack (API, scheduler, three `echo` worker processes: the echo backend answers
with the prompt, so the run measures Switchyard and not a model), submits the jobs through the
REST API in batches, and while they drain:

  at 15% finished   kill -9 one worker (its running micro-batch must be re-run elsewhere)
  at 35% finished   kill -9 the scheduler, start a new one 3 s later
  at 55% finished   the database refuses connections for 10 s (and its open ones are cut)

Then it prints submitted, succeeded, failed with reasons, jobs run twice, results written twice
(must be 0), the drain rate, and the decision history's size. "Run" and "result written" are
counted by database triggers installed for the run (every transition into `running`, every write
of a result), not by Switchyard's own counters. Every phase is bounded (--timeout-s).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.client import SwitchyardClient  # noqa: E402
from scheduler.embedded import EmbeddedStack  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.storage.migrate import upgrade_database  # noqa: E402

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"
SUBMIT_BATCH = 5000
WORKERS = 3

FLEET = """
[[models]]
name = "echo"
backend = "echo"
weights = "none"
usd_per_second = 0.000001
capacity_jobs = 2000
max_batch_jobs = 32
tokens_per_second_prior = 1000.0
"""

AUDIT_SQL = """
CREATE TABLE audit_runs (job_id varchar NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE audit_results (job_id varchar NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION audit_job() RETURNS trigger AS $$
BEGIN
  IF NEW.status = 'running' AND OLD.status <> 'running' THEN
    INSERT INTO audit_runs (job_id) VALUES (NEW.id);
  END IF;
  IF NEW.result_text IS NOT NULL AND (OLD.result_text IS NULL OR NEW.result_text <> OLD.result_text
                                      OR NEW.finished_at IS DISTINCT FROM OLD.finished_at) THEN
    INSERT INTO audit_results (job_id) VALUES (NEW.id);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_job AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION audit_job();
"""


def log(message: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    def __init__(self, stack: EmbeddedStack, db_name: str, dsn: str, total: int) -> None:
        self.stack = stack
        self.db_name = db_name
        self.dsn = dsn
        self.total = total

    def counts(self) -> Counter[str]:
        try:
            with psycopg.connect(self.dsn, connect_timeout=3) as conn:
                return Counter(dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()))
        except psycopg.OperationalError:
            return Counter()   # refused during the outage: try again later

    def finished(self, counts: Counter[str]) -> int:
        return sum(counts[s] for s in ("succeeded", "failed", "cancelled", "expired"))

    def kill_a_worker(self) -> None:
        name = next(n for n in self.stack.processes if n.startswith("worker"))
        process = self.stack.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log(f"killed {name} (kill -9, with its pool process)")

    def kill_and_restart_the_scheduler(self) -> None:
        process = self.stack.processes.pop("scheduler")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log("killed the scheduler (kill -9); starting a new one in 3 s")
        time.sleep(3)
        self.stack.spawn("scheduler-restarted", ["scheduler"])

    def refuse_database_connections(self, seconds: float) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS false')
            try:
                cut = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,)).fetchone()
                log(f"the database refuses connections for {seconds:.0f} s ({cut[0] if cut else 0} cut)")
                time.sleep(seconds)
            finally:
                admin.execute(f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS true')
        log("the database accepts connections again")


def submit_all(api: SwitchyardClient, total: int) -> float:
    start = time.perf_counter()
    for first in range(0, total, SUBMIT_BATCH):
        size = min(SUBMIT_BATCH, total - first)
        api.submit_batch({"name": f"load-{first // SUBMIT_BATCH}",
                          "jobs": [{"prompt": f"load job {first + i}: echo me back", "max_tokens": 16}
                                   for i in range(size)]})
    return time.perf_counter() - start


def report(run: Run, elapsed_s: float, submit_s: float) -> None:
    with psycopg.connect(run.dsn) as conn:
        counts = Counter(dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()))
        reasons = conn.execute("SELECT error, count(*) FROM jobs WHERE status IN ('failed', 'expired') "
                               "GROUP BY error ORDER BY count(*) DESC LIMIT 10").fetchall()
        run_twice = conn.execute("SELECT count(*) FROM (SELECT job_id FROM audit_runs GROUP BY job_id "
                                 "HAVING count(*) > 1) AS t").fetchone()
        written_twice = conn.execute("SELECT count(*) FROM (SELECT job_id FROM audit_results GROUP BY job_id "
                                     "HAVING count(*) > 1) AS t").fetchone()
        wrong_answers = conn.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded' "
                                     "AND result_text <> prompt").fetchone()
        decisions = conn.execute("SELECT count(*), pg_total_relation_size('decisions') FROM decisions").fetchone()
        ticks = conn.execute("SELECT count(*), count(DISTINCT epoch) FROM ticks").fetchone()
    assert run_twice and written_twice and wrong_answers and decisions and ticks
    print()
    print(f"| jobs submitted | {run.total:,} (API intake {run.total / submit_s:,.0f} jobs/s) |")
    print(f"| succeeded | {counts['succeeded']:,} |")
    print(f"| failed | {counts['failed']:,} |")
    for error, number in reasons:
        print(f"|   {number:,} x | {error} |")
    left = run.total - run.finished(counts)
    print(f"| not finished | {left:,} {dict((s, n) for s, n in counts.items() if s in ('pending', 'queued', 'running'))} |")
    print(f"| jobs run twice | {run_twice[0]:,} |")
    print(f"| results written twice | {written_twice[0]:,} (must be 0) |")
    print(f"| answers that are not their job's echo | {wrong_answers[0]:,} |")
    print(f"| drain rate | {run.finished(counts) / elapsed_s:,.0f} jobs/s ({elapsed_s:,.0f} s from the first submit) |")
    print(f"| decision history | {decisions[0]:,} rows ({decisions[0] / max(run.total, 1):.2f} per job), "
          f"{decisions[1] / 2**20:.1f} MB; {ticks[0]:,} committed ticks under {ticks[1]} leader epochs |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="give up draining after this long")
    args = parser.parse_args()

    db_name = f"switchyard_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db_name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{db_name}"
    redis.Redis.from_url(REDIS_URL).flushdb()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fleet_file = Path(tmp) / "fleet.toml"
            fleet_file.write_text(FLEET)
            settings = Settings(database_url=dsn.replace("postgresql://", "postgresql+psycopg://"),
                                broker_url=REDIS_URL, fleet_file=fleet_file, tick_interval_s=1.0,
                                heartbeat_interval_s=2.0, run_lease_s=10.0, predictor_dir=Path(tmp) / "predictors",
                                exploration_target_labels=0)
            upgrade_database(settings.database_url)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(AUDIT_SQL)
            stack = EmbeddedStack(settings, Path(tmp) / "logs", api_port=18_765, worker_models=["echo"] * WORKERS)
            with stack:
                stack.wait_ready(timeout_s=120)
                run = Run(stack, db_name, dsn, args.jobs)
                started = time.perf_counter()
                with SwitchyardClient(stack.api_url, stack.api_key, timeout_s=300) as api:
                    submit_s = submit_all(api, args.jobs)
                log(f"submitted {args.jobs:,} jobs in {submit_s:.0f} s")
                faults = [(0.15, run.kill_a_worker), (0.35, run.kill_and_restart_the_scheduler),
                          (0.55, lambda: run.refuse_database_connections(10.0))]
                deadline = time.monotonic() + args.timeout_s
                last_note = 0.0
                while time.monotonic() < deadline:
                    counts = run.counts()
                    done = run.finished(counts)
                    if faults and done >= faults[0][0] * args.jobs:
                        faults.pop(0)[1]()
                    if done >= args.jobs and not faults:
                        break
                    if time.monotonic() - last_note > 15:
                        log(f"{done:,}/{args.jobs:,} finished {dict(counts)}")
                        last_note = time.monotonic()
                    time.sleep(0.5)
                elapsed = time.perf_counter() - started
                alive = {name: process.poll() is None for name, process in stack.processes.items()}
                log(f"processes alive at the end: {alive}")
                report(run, elapsed, submit_s)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        redis.Redis.from_url(REDIS_URL).flushdb()


if __name__ == "__main__":
    main()
