"""Worker throughput and Switchyard's per-job overhead.

    python benchmarks/bench_worker.py                     # (a) in process + (b) echo overhead
    python benchmarks/bench_worker.py --through-worker    # (a) also through a real worker process
    python benchmarks/bench_worker.py --skip-overhead     # (a) only: needs no Postgres or Redis

(a) Tokens/s of the default fleet's SmolLM2-135M through Switchyard's llama.cpp backend
    (``LlamaCppBackend.generate_batch`` over micro-batches of the fleet's ``max_batch_jobs``, back
    to back, as a worker runs them) against bare llama-cpp-python ``Llama.create_chat_completion``
    on the same conversations with the same parameters, in the same process, rounds alternating
    (ABBA) so that drift in a shared machine's speed hits both alike. ``--through-worker`` adds the
    whole path: a real worker process (Celery over Redis, claims and result writes in Postgres),
    timed from its first claim to its last result. Target: >= 90% of bare.
(b) Per-job overhead with the zero-latency echo backend (``workers/backends/echo.py``): submit
    through the store, scheduling ticks (claim, plan, commit, publish), and the real worker's
    Celery consumer, claim and result write. Target: < 5 ms per job.

Postgres and Redis are the machine's own (``--postgres-admin-dsn``, ``--redis-url``); the
benchmark makes a fresh database, migrates it and drops it at the end, and empties its Redis
database (13 by default: give it one nothing else uses).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
import redis

from scheduler.fleet import load_fleet
from scheduler.jobspec import BatchSpec, JobSpec
from scheduler.loop import Scheduler
from scheduler.settings import Settings
from scheduler.storage import Database, FleetStore, JobStore, utcnow
from scheduler.storage.batches import BatchStore
from scheduler.storage.migrate import upgrade_database
from workers.backends.base import GenerationRequest, GenerationResult
from workers.backends.prompts import request_messages

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"
OWNER = "bench"
TOPICS = ["the ocean", "a lighthouse", "mountains", "a city at night", "trains", "the moon", "gardens",
          "winter", "a library", "rivers", "bees", "deserts", "clocks", "volcanoes", "bridges", "forests"]


@dataclass
class Throughput:
    output_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0


def prompts(count: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


# --- (a) in process --------------------------------------------------------------------------------

def llama_in_process(texts: Sequence[str], max_tokens: int, rounds: int) -> tuple[Throughput, Throughput]:
    import llama_cpp

    from workers.backends.llama_cpp import DEFAULT_SEED, LlamaCppBackend
    from workers.model_files import resolve_weights

    settings = Settings()
    spec = load_fleet(settings.fleet_file).get(MODEL)
    path = resolve_weights(spec, settings)
    switchyard = LlamaCppBackend(spec, path, n_threads=1)
    bare = llama_cpp.Llama(model_path=str(path), n_ctx=spec.n_ctx, n_threads=1, n_threads_batch=1,
                           seed=DEFAULT_SEED, verbose=False)
    requests = [GenerationRequest(job_id=str(i), prompt=t, messages=None, max_tokens=max_tokens)
                for i, t in enumerate(texts)]
    conversations = [request_messages(r, spec.system_prompt) for r in requests]
    batches = [requests[i:i + spec.max_batch_jobs] for i in range(0, len(requests), spec.max_batch_jobs)]

    def run_switchyard() -> Throughput:
        started = time.perf_counter()
        results = [r for batch in batches for r in switchyard.generate_batch(batch)]
        elapsed = time.perf_counter() - started
        done = [r for r in results if isinstance(r, GenerationResult)]
        assert len(done) == len(requests), [r for r in results if not isinstance(r, GenerationResult)]
        return Throughput(sum(r.output_tokens for r in done), elapsed)

    def run_bare() -> Throughput:
        started, tokens = time.perf_counter(), 0
        for messages in conversations:
            out = bare.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0,  # type: ignore[arg-type]
                                              seed=DEFAULT_SEED)
            tokens += out["usage"]["completion_tokens"]  # type: ignore[index]
        return Throughput(tokens, time.perf_counter() - started)

    run_switchyard(), run_bare()  # warm-up: page the weights in, fill both prompt caches
    totals = {"switchyard": Throughput(), "bare": Throughput()}
    for round_ in range(rounds):
        order = [("switchyard", run_switchyard), ("bare", run_bare)]
        for name, run in order if round_ % 2 == 0 else reversed(order):
            measured = run()
            totals[name].output_tokens += measured.output_tokens
            totals[name].seconds += measured.seconds
            print(f"  round {round_ + 1} {name:10s} {measured.output_tokens:5d} tokens {measured.seconds:6.2f}s "
                  f"{measured.tokens_per_s:6.1f} tok/s", flush=True)
    switchyard.close()
    bare.close()
    return totals["switchyard"], totals["bare"]


# --- services: a fresh database, Redis, worker processes -------------------------------------------

@dataclass
class Services:
    database_url: str
    admin_dsn: str
    redis_url: str
    workdir: Path

    def settings(self, fleet_file: Path) -> Settings:
        return Settings(database_url=self.database_url, broker_url=self.redis_url, fleet_file=fleet_file,
                        heartbeat_interval_s=1.0)

    def env(self, settings: Settings) -> dict[str, str]:
        return os.environ | {
            "SWITCHYARD_DATABASE_URL": settings.database_url, "SWITCHYARD_BROKER_URL": settings.broker_url,
            "SWITCHYARD_FLEET_FILE": str(settings.fleet_file),
            "SWITCHYARD_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
            "SWITCHYARD_LLAMA_THREADS": "1",
        }

    def query(self, sql: str, *params: object) -> tuple[object, ...]:
        dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return tuple(row)


@contextmanager
def services(admin_dsn: str, redis_url: str) -> Iterator[Services]:
    name = f"switchyard_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    client = redis.Redis.from_url(redis_url)
    try:
        with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as workdir:
            url = f"{base}/{name}"
            upgrade_database(url)
            yield Services(url, admin_dsn, redis_url, Path(workdir))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client.flushdb()
        client.close()


@contextmanager
def worker(command: list[str], settings: Settings, svc: Services, model: str, timeout_s: float = 300) -> Iterator[None]:
    """A worker process for ``model``, ready (its heartbeat is in the database) when the block starts."""
    log_path = svc.workdir / f"worker-{model}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=svc.env(settings), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while svc.query("SELECT count(*) FROM worker_heartbeats WHERE model = %s", model)[0] == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker for {model} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fleet_file(svc: Services, entry: str) -> Path:
    path = svc.workdir / f"fleet-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(f"[[models]]\n{entry}")
    return path


@dataclass
class RunTimes:
    submit_s: float
    tick_s: float
    ticks: int
    first_claim_to_last_result_s: float
    submit_to_last_result_s: float
    output_tokens: int


def run_jobs(svc: Services, settings: Settings, jobs: list[JobSpec], timeout_s: float, poll_s: float) -> RunTimes:
    """Submit ``jobs`` as one batch, tick until every job is published, wait for every result
    (polling every ``poll_s``: slowly while a model shares the CPU with this process)."""
    db = Database(settings.database_url)
    scheduler = Scheduler.from_settings(settings)
    FleetStore(db).sync(scheduler.fleet, utcnow())
    store = JobStore(db)
    wall_start = utcnow()
    started = time.perf_counter()
    batch, _jobs, _ = store.submit_batch(OWNER, BatchSpec(jobs=jobs), utcnow())
    submit_s = time.perf_counter() - started
    tick_s, ticks = 0.0, 0
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.perf_counter()
        scheduler.tick()
        tick_s += time.perf_counter() - started
        ticks += 1
        counts = BatchStore(db).get(OWNER, batch.id).counts
        if not counts.get("pending"):
            break
        assert time.monotonic() < deadline, counts
        time.sleep(poll_s)
    while (counts := BatchStore(db).get(OWNER, batch.id).counts).get("succeeded", 0) < len(jobs):
        assert not counts.get("failed"), counts
        assert time.monotonic() < deadline, counts
        time.sleep(poll_s)
    first_claim, last_result, tokens = svc.query(
        "SELECT min(started_at), max(finished_at), sum(output_tokens) FROM jobs WHERE batch_id = %s", batch.id)
    assert isinstance(first_claim, dt.datetime) and isinstance(last_result, dt.datetime)
    db.dispose()
    return RunTimes(submit_s, tick_s, ticks, (last_result - first_claim).total_seconds(),
                    (last_result - wall_start).total_seconds(), int(tokens))  # type: ignore[call-overload]


# --- (a) through a worker process, (b) echo overhead ---------------------------------------------

def llama_through_worker(svc: Services, texts: Sequence[str], max_tokens: int) -> Throughput:
    default = load_fleet(Settings().fleet_file).get(MODEL)
    entry = "\n".join(f"{key} = {json.dumps(value)}" for key, value in {
        "name": MODEL, "backend": "llama_cpp", "weights": default.weights, "prompt_format": "chat",
        "system_prompt": default.system_prompt, "usd_per_second": default.usd_per_second,
        "capacity_jobs": len(texts), "max_batch_jobs": default.max_batch_jobs,
        "tokens_per_second_prior": default.tokens_per_second_prior}.items())
    settings = svc.settings(fleet_file(svc, entry))
    # What `switchyard worker --model MODEL` runs, without the CLI around it.
    code = ("import sys; from scheduler.settings import Settings; from workers.tasks import run_worker; "
            "run_worker(Settings(), sys.argv[1], 1, 'WARNING')")
    command = [sys.executable, "-c", code, MODEL]
    with worker(command, settings, svc, MODEL):
        times = run_jobs(svc, settings, [JobSpec(prompt=t, max_tokens=max_tokens) for t in texts], timeout_s=900,
                         poll_s=1.0)
    through = Throughput(times.output_tokens, times.first_claim_to_last_result_s)
    print(f"  worker process   {through.output_tokens:5d} tokens {through.seconds:6.2f}s "
          f"{through.tokens_per_s:6.1f} tok/s", flush=True)
    return through


def echo_overhead(svc: Services, num_jobs: int, batch_jobs: int) -> RunTimes:
    # The echo backend (workers/backends/echo.py) answers at once: a job's time is Switchyard's own.
    entry = (f'name = "echo"\nbackend = "echo"\nweights = "none"\n'
             f"usd_per_second = 0.0\ncapacity_jobs = {num_jobs}\nmax_batch_jobs = {batch_jobs}\n"
             "quality_prior = 0.9\ntokens_per_second_prior = 1000000.0\n")
    settings = svc.settings(fleet_file(svc, entry))
    code = ("import sys; from scheduler.settings import Settings; from workers.tasks import run_worker; "
            "run_worker(Settings(), sys.argv[1], 1, 'WARNING')")
    command = [sys.executable, "-c", code, "echo"]
    with worker(command, settings, svc, "echo", timeout_s=60):
        run_jobs(svc, settings, [JobSpec(prompt="warm up", max_tokens=4) for _ in range(batch_jobs)], timeout_s=60,
                 poll_s=0.05)
        return run_jobs(svc, settings, [JobSpec(prompt=f"echo {i}", max_tokens=4) for i in range(num_jobs)],
                        timeout_s=600, poll_s=0.05)


# --- the table -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per round for (a)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of each side in (a)")
    parser.add_argument("--through-worker", action="store_true", help="(a) also through a real worker process")
    parser.add_argument("--echo-jobs", type=int, default=2000, help="jobs for (b)")
    parser.add_argument("--echo-batch-jobs", type=int, nargs="+", default=[4, 32],
                        help="micro-batch sizes (max_batch_jobs) for (b); 4 is the default fleet's")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--postgres-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    texts = prompts(args.prompts)
    rows: list[tuple[str, str, str]] = []
    bare = None
    if not args.skip_throughput:
        print(f"(a) {MODEL}, {len(texts)} prompts x {args.rounds} rounds, max_tokens {args.max_tokens}, 1 thread")
        switchyard, bare = llama_in_process(texts, args.max_tokens, args.rounds)
        rows += [
            ("(a) bare llama-cpp-python create_chat_completion", f"{bare.tokens_per_s:.1f} tok/s",
             f"{bare.output_tokens} tokens in {bare.seconds:.1f}s"),
            ("(a) Switchyard LlamaCppBackend.generate_batch", f"{switchyard.tokens_per_s:.1f} tok/s",
             f"{switchyard.tokens_per_s / bare.tokens_per_s:.1%} of bare (target >= 90%)"),
        ]
    if args.through_worker or not args.skip_overhead:
        with services(args.postgres_admin_dsn, args.redis_url) as svc:
            if args.through_worker and bare is not None:
                print("(a) through a worker process (Celery + Redis + Postgres)")
                through = llama_through_worker(svc, texts, args.max_tokens)
                rows.append(("(a) Switchyard worker process, first claim -> last result",
                             f"{through.tokens_per_s:.1f} tok/s",
                             f"{through.tokens_per_s / bare.tokens_per_s:.1%} of bare (target >= 90%)"))
            if not args.skip_overhead:
                for batch_jobs in args.echo_batch_jobs:
                    print(f"(b) echo model, {args.echo_jobs} jobs, max_batch_jobs {batch_jobs}")
                    t = echo_overhead(svc, args.echo_jobs, batch_jobs)
                    per_job = 1000.0 / args.echo_jobs
                    label = f"(b) max_batch_jobs={batch_jobs}:"
                    rows += [
                        (f"{label} submit (one batch, store)", f"{t.submit_s * per_job:.2f} ms/job", ""),
                        (f"{label} ticks (claim, plan, commit, publish)", f"{t.tick_s * per_job:.2f} ms/job",
                         f"{t.ticks} ticks"),
                        (f"{label} worker (Celery, claim, result write)",
                         f"{t.first_claim_to_last_result_s * per_job:.2f} ms/job", "first claim -> last result"),
                        (f"{label} whole system, submit -> last result",
                         f"{t.submit_to_last_result_s * per_job:.2f} ms/job", "target < 5 ms/job"),
                    ]
    width = max(len(r[0]) for r in rows) if rows else 0
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>14}  {note}")


if __name__ == "__main__":
    main()
