"""Intake: batch submission through the real HTTP API against a raw COPY, and single submits while
the scheduler drains a backlog.

    python benchmarks/bench_intake.py                       # both parts, about 5 minutes here
    python benchmarks/bench_intake.py --repeats 7           # more pairs (noisy machines)
    python benchmarks/bench_intake.py --skip-drain          # intake only

On this machine's own Postgres (a fresh database per part) and Redis (--redis-url, flushed).

Part 1, intake. The API runs as production runs it (`switchyard api`: uvicorn, one process) in a
subprocess, called with a real key. Each repeat measures, one right after the other so that both
see the same machine: (a) the baseline, a raw binary COPY of N rows equivalent to what the API
writes for the same request (same columns, values and sizes, a batch row first for their
foreign key) into the real `jobs` table with all its indexes, in one transaction, from rows
already built in memory; (b) `POST /v1/batches` with the same N jobs inline and a batch
idempotency key (bodies encoded before the clock starts; the clock stops when the whole answer,
with its N job ids, is read). Sizes 1,000 and 10,000; 10,000 with an idempotency key on every job
too; and an OpenAI input file of 10,000 chat requests (uploaded before the clock; the clock
covers `POST /v1/batches`, which reads and validates the file and writes its jobs). The table
shows medians and the ratio of the medians (target: >= 1/3 of the raw COPY's rows/s).

Part 2, latency while draining. The embedded stack (`switchyard api`, `switchyard scheduler`
ticking every tick_interval_s as in production, and --workers `echo` workers, which answer each
job with its prompt after --echo-delays seconds) runs on Postgres and Redis. Single
`POST /v1/jobs` requests, one at a time at --rate per second, are timed with the scheduler idle
(no backlog), then while the stack drains a --backlog of pending jobs submitted as 10,000-job
batches: once with workers that answer at once (every core busy draining, the hardest case on
one machine), once with workers that take 0.5 s a job (the scheduler ticking over the backlog at
model speed, as production drains). Beside each, a bare one-row INSERT + COMMIT on the same
Postgres: the floor under any write. Target: p99 < 20 ms.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.embedded import EmbeddedStack  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.storage import Database, TenantStore, utcnow  # noqa: E402
from scheduler.storage.migrate import upgrade_database  # noqa: E402

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
SEED_BATCH = 10_000
# The columns a submitted job is written with, and their Postgres types (binary COPY): the
# baseline's own list, so that it stays a raw COPY whatever the code under test does.
COPY_COLUMNS = {
    "id": "varchar", "batch_id": "varchar", "owner": "varchar", "status": "varchar", "prompt": "text",
    "messages": "text", "max_tokens": "int4", "temperature": "float8", "stop": "text", "min_quality": "float8",
    "deadline_at": "timestamptz", "allowed_models": "text", "max_cost_usd": "float8", "on_deadline_miss": "varchar",
    "metadata": "text", "reference": "text", "grader": "varchar", "idempotency_key": "varchar",
    "custom_id": "varchar", "request_hash": "varchar", "attempts": "int4", "created_at": "timestamptz",
    "updated_at": "timestamptz", "expires_at": "timestamptz",
}
ECHO_FLEET = """
[[models]]
name = "echo"
backend = "echo"
weights = "none"
usd_per_second = 0.000001
capacity_jobs = 2000
max_batch_jobs = 32
tokens_per_second_prior = 1000.0
[models.options]
delay_s = {delay_s}
"""


# -- databases and processes ------------------------------------------------------------------
@contextmanager
def fresh_database(tag: str) -> Iterator[tuple[str, str]]:
    """A new migrated database: (SQLAlchemy URL, libpq DSN); dropped afterwards."""
    name = f"switchyard_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        upgrade_database(url)
        yield url, dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def api_process(settings: Settings, log_dir: Path) -> Iterator[int]:
    """`switchyard api` in a subprocess, as production runs it; yields its port once it answers."""
    port = free_port()
    env = os.environ | settings.as_environment()
    with (log_dir / "api.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "api", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the API exited; see {log_dir / 'api.log'}")
            try:
                status, _ = request(Client(port, ""), "GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: the least client work per request)."""

    def __init__(self, port: int, key: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}


def request(client: Client, method: str, path: str, body: bytes | None = None,
            content_type: str | None = None) -> tuple[int, bytes]:
    headers = client.headers if content_type is None else client.headers | {"content-type": content_type}
    client.connection.request(method, path, body=body, headers=headers)
    response = client.connection.getresponse()
    return response.status, response.read()


# -- part 1: intake ---------------------------------------------------------------------------
def job_bodies(count: int, tag: str, job_keys: bool) -> list[dict[str, object]]:
    """An eval-like batch: distinct prompts, a max_tokens, a little metadata per job."""
    jobs: list[dict[str, object]] = [
        {"prompt": f"Question {i} of {tag}: what is {i} plus 17? Answer with the number only.", "max_tokens": 64,
         "metadata": {"row": i, "source": "bench"}} for i in range(count)]
    if job_keys:
        for i, job in enumerate(jobs):
            job["idempotency_key"] = f"{tag}-{i}"
    return jobs


def file_lines(count: int, tag: str) -> list[dict[str, object]]:
    """An OpenAI batch input file's requests: chat completions with a custom_id each."""
    return [{"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "auto", "max_tokens": 64,
                      "messages": [{"role": "user", "content": f"Question {i} of {tag}: what is {i} plus 17?"}]}}
            for i in range(count)]


def copy_rows(dsn: str, jobs: list[dict[str, object]], owner: str) -> float:
    """The baseline: seconds to COPY rows equivalent to what the API writes for ``jobs`` (inline
    jobs, or an input file's lines) into the real jobs table, with a batch row first, in one
    transaction (rows built before the clock)."""
    now = dt.datetime.now(dt.timezone.utc)
    batch_id = str(uuid.uuid4())
    rows = []
    for i, job in enumerate(jobs):
        created = now + dt.timedelta(microseconds=i)
        from_file = "custom_id" in job
        body = cast(dict[str, Any], job["body"] if from_file else job)
        values = {"id": str(uuid.uuid4()), "batch_id": batch_id, "owner": owner, "status": "pending",
                  "prompt": body.get("prompt"), "messages": json.dumps(body.get("messages")),
                  "max_tokens": body["max_tokens"], "temperature": 0.0, "stop": "null", "min_quality": None,
                  "deadline_at": created + dt.timedelta(days=1) if from_file else None, "allowed_models": "null",
                  "max_cost_usd": None, "on_deadline_miss": "run_late", "metadata": json.dumps(body.get("metadata")),
                  "reference": None, "grader": None, "idempotency_key": body.get("idempotency_key"),
                  "custom_id": job.get("custom_id"), "request_hash": uuid.uuid4().hex * 2 if body.get("idempotency_key") else "", "attempts": 0,
                  "created_at": created, "updated_at": created, "expires_at": created + dt.timedelta(days=1)}
        rows.append(tuple(values[name] for name in COPY_COLUMNS))
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        conn.execute("INSERT INTO batches (id, owner, num_jobs, request_hash, created_at, status) "
                     "VALUES (%s, %s, %s, %s, %s, 'in_progress')", (batch_id, owner, len(rows), "0" * 64, now))
        with conn.cursor() as cursor, cursor.copy(
                f"COPY jobs ({', '.join(COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(COPY_COLUMNS.values()))
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def post_batch(client: Client, jobs: list[dict[str, object]], tag: str) -> float:
    body = json.dumps({"name": tag, "idempotency_key": tag, "jobs": jobs}).encode()
    started = time.perf_counter()
    status, answer = request(client, "POST", "/v1/batches", body)
    elapsed = time.perf_counter() - started
    if status != 201 or len(json.loads(answer)["job_ids"]) != len(jobs):
        raise SystemExit(f"POST /v1/batches answered {status}: {answer[:300]!r}")
    return elapsed


def post_file_batch(client: Client, lines: list[dict[str, object]], tag: str) -> float:
    """Upload the input file (not timed), then time creating its batch (which reads the file)."""
    boundary = uuid.uuid4().hex
    upload = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
              f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{tag}.jsonl"\r\n'
              "Content-Type: application/jsonl\r\n\r\n").encode()
    upload += "\n".join(json.dumps(line) for line in lines).encode() + f"\r\n--{boundary}--\r\n".encode()
    status, answer = request(client, "POST", "/v1/files", upload, f"multipart/form-data; boundary={boundary}")
    if status != 200:
        raise SystemExit(f"POST /v1/files answered {status}: {answer[:300]!r}")
    body = json.dumps({"input_file_id": json.loads(answer)["id"], "endpoint": "/v1/chat/completions",
                       "completion_window": "24h"}).encode()
    started = time.perf_counter()
    status, answer = request(client, "POST", "/v1/batches", body)
    elapsed = time.perf_counter() - started
    created = json.loads(answer)
    if status != 200 or created.get("status") != "in_progress" or created["request_counts"]["total"] != len(lines):
        raise SystemExit(f"POST /v1/batches (input file) answered {status}: {answer[:300]!r}")
    return elapsed


@dataclass
class IntakeRow:
    label: str
    size: int
    copy_s: list[float]
    api_s: list[float]

    def rates(self) -> tuple[float, float]:
        return self.size / statistics.median(self.copy_s), self.size / statistics.median(self.api_s)


def run_intake(repeats: int, sizes: list[int], log_dir: Path) -> list[IntakeRow]:
    with fresh_database("intake") as (url, dsn):
        settings = Settings(database_url=url, broker_url="memory://")
        db = Database(url)
        key = TenantStore(db).create_key("bench", utcnow(), name="bench_intake").key
        db.dispose()
        largest = max(sizes)
        # (label, size, how the jobs arrive: inline, inline with a key per job, or an input file)
        variants = [(f"{size:,} jobs", size, "inline") for size in sizes]
        variants += [(f"{largest:,} jobs, a key per job", largest, "keys"),
                     (f"{largest:,} requests in an input file (OpenAI)", largest, "file")]
        rows = [IntakeRow(label, size, [], []) for label, size, _ in variants]
        with api_process(settings, log_dir) as port:
            client = Client(port, key)
            post_batch(client, job_bodies(100, "warm-up", False), "warm-up")   # first-request imports
            post_file_batch(client, file_lines(100, "warm-up"), "warm-up")
            for repeat in range(repeats):
                for row, (_, size, arrival) in zip(rows, variants, strict=True):
                    tag = f"r{repeat}-{size}-{arrival}"
                    if arrival == "file":
                        row.copy_s.append(copy_rows(dsn, file_lines(size, "copy-" + tag), "copy"))
                        row.api_s.append(post_file_batch(client, file_lines(size, "api-" + tag), "api-" + tag))
                    else:
                        keys = arrival == "keys"
                        row.copy_s.append(copy_rows(dsn, job_bodies(size, "copy-" + tag, keys), "copy"))
                        row.api_s.append(post_batch(client, job_bodies(size, "api-" + tag, keys), "api-" + tag))
                    copy_rate, api_rate = size / row.copy_s[-1], size / row.api_s[-1]
                    print(f"  {row.label:42s} repeat {repeat + 1}: COPY {copy_rate:8,.0f} rows/s   "
                          f"API {api_rate:8,.0f} jobs/s   ratio {api_rate / copy_rate:.2f}", flush=True)
        return rows


# -- part 2: latency while the scheduler drains -----------------------------------------------
def pending_and_finished(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        counts: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    return counts.get("pending", 0), counts.get("succeeded", 0) + counts.get("failed", 0)


def time_single_submits(client: Client, count: int, rate: float, tag: str) -> list[float]:
    """``count`` single POST /v1/jobs, one at a time, started every 1/rate s: latencies in ms."""
    latencies = []
    next_start = time.perf_counter()
    for i in range(count):
        next_start += 1.0 / rate
        body = json.dumps({"prompt": f"single {tag} {i}: what is {i} times 3?", "max_tokens": 16}).encode()
        started = time.perf_counter()
        status, answer = request(client, "POST", "/v1/jobs", body)
        latencies.append((time.perf_counter() - started) * 1000)
        if status != 201:
            raise SystemExit(f"POST /v1/jobs answered {status}: {answer[:300]!r}")
        time.sleep(max(0.0, next_start - time.perf_counter()))
    return latencies


def time_durable_commits(dsn: str, count: int) -> list[float]:
    """The floor under any write: a one-row INSERT and its COMMIT (a WAL flush) on the same
    Postgres, ``count`` times in a row; latencies in ms."""
    latencies = []
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (at timestamptz)")
        conn.commit()
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe VALUES (now())")
            conn.commit()
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    return latencies


@dataclass
class LatencyRow:
    label: str
    latencies_ms: list[float]
    note: str

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_drain(backlog: int, workers: int, delay_s: float, requests: int, rate: float, redis_url: str,
              log_dir: Path, *, idle_rows: bool) -> list[LatencyRow]:
    """Latency rows while the stack drains ``backlog`` jobs (each taking the echo workers
    ``delay_s``), after rows with the scheduler idle when ``idle_rows``."""
    redis.Redis.from_url(redis_url).flushdb()
    with fresh_database("drain") as (url, dsn), tempfile.TemporaryDirectory() as tmp:
        fleet_file = Path(tmp) / "fleet.toml"
        fleet_file.write_text(ECHO_FLEET.format(delay_s=delay_s))
        settings = Settings(database_url=url, broker_url=redis_url, fleet_file=fleet_file,
                            predictor_dir=Path(tmp) / "predictors", exploration_target_labels=0)
        stack = EmbeddedStack(settings, log_dir / f"stack-{delay_s:g}", api_port=free_port(),
                              worker_models=["echo"] * workers)
        try:
            with stack:
                stack.wait_ready(timeout_s=180)
                client = Client(stack.api_port, stack.api_key)
                time_single_submits(client, 20, rate, "warm-up")
                rows = []
                if idle_rows:
                    idle = time_single_submits(client, requests, rate, "idle")
                    rows += [LatencyRow("POST /v1/jobs, scheduler idle (no backlog)", idle, ""),
                             LatencyRow("  bare INSERT + COMMIT on Postgres, idle", time_durable_commits(dsn, 300),
                                        "")]
                seeded = time.perf_counter()
                for first in range(0, backlog, SEED_BATCH):
                    size = min(SEED_BATCH, backlog - first)
                    post_batch(client, job_bodies(size, f"backlog-{first}", False), f"backlog-{first}")
                seed_s = time.perf_counter() - seeded
                print(f"  backlog of {backlog:,} submitted in {seed_s:.1f} s ({backlog / seed_s:,.0f} jobs/s)")
                while pending_and_finished(dsn)[1] == 0:    # until the drain has started
                    time.sleep(0.2)
                pending_before, finished_before = pending_and_finished(dsn)
                window_start = time.perf_counter()
                draining = time_single_submits(client, requests, rate, "draining")
                window_s = time.perf_counter() - window_start
                pending_after, finished_after = pending_and_finished(dsn)
                note = (f"{(finished_after - finished_before) / window_s:,.0f} jobs/s finished; "
                        f"pending {pending_before:,} -> {pending_after:,}")
                speed = "at once" if delay_s == 0 else f"in {delay_s:g} s each"
                rows.append(LatencyRow(f"POST /v1/jobs, draining {backlog:,} jobs, {workers} echo workers answering "
                                       f"{speed}", draining, note))
                rows.append(LatencyRow("  bare INSERT + COMMIT on Postgres, meanwhile", time_durable_commits(dsn, 300),
                                       f"pending after: {pending_and_finished(dsn)[0]:,}"))
                stack.check_alive()
                return rows
        finally:
            redis.Redis.from_url(redis_url).flushdb()


# -- main -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="baseline/API pairs per size (medians reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--backlog", type=int, default=50_000, help="pending jobs the scheduler drains in part 2")
    parser.add_argument("--workers", type=int, default=2, help="echo worker processes in part 2")
    parser.add_argument("--echo-delays", type=float, nargs="+", default=[0.0, 0.5],
                        help="seconds each echo job takes, one drain per value (0: as fast as Switchyard goes)")
    parser.add_argument("--requests", type=int, default=1000, help="single submits timed per latency row")
    parser.add_argument("--rate", type=float, default=50.0, help="single submits started per second")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="a Redis database this run may flush")
    parser.add_argument("--skip-drain", action="store_true", help="part 1 only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_intake_") as logs:
        log_dir = Path(logs)
        print(f"part 1: batch intake, {args.repeats} baseline/API pairs per size")
        intake = run_intake(args.repeats, args.sizes, log_dir)
        drain: list[LatencyRow] = []
        if not args.skip_drain:
            print(f"part 2: single POST /v1/jobs at {args.rate:g}/s, {args.requests} per row")
            for index, delay_s in enumerate(args.echo_delays):
                drain += run_drain(args.backlog, args.workers, delay_s, args.requests, args.rate, args.redis_url,
                                   log_dir, idle_rows=index == 0)

    print()
    print("| batch request | raw COPY rows/s | API jobs/s | API / COPY | API s per request |")
    print("|---|---|---|---|---|")
    for row in intake:
        copy_rate, api_rate = row.rates()
        print(f"| {row.label} | {copy_rate:,.0f} | {api_rate:,.0f} | {api_rate / copy_rate:.2f} "
              f"| {statistics.median(row.api_s):.2f} |")
    if drain:
        print()
        print("| latency | p50 ms | p99 ms | max ms | requests | during the window |")
        print("|---|---|---|---|---|---|")
        for latency in drain:
            print(f"| {latency.label} | {latency.quantile(0.5):.1f} | {latency.quantile(0.99):.1f} "
                  f"| {max(latency.latencies_ms):.1f} | {len(latency.latencies_ms)} | {latency.note} |")


if __name__ == "__main__":
    main()
