"""The whole scheduling tick on real Postgres + Redis: claim, predict, solve, commit, publish.

    python benchmarks/bench_tick.py                    # both scenarios below
    python benchmarks/bench_tick.py --scenario ample --sizes 10000      # one scenario, one size
    python benchmarks/bench_tick.py --repeats 3        # medians of 3 runs per row (noisy machines)

Two scenarios. "ample": capacity for every job (the window is the whole backlog). "scarce": the
normal state of a batch scheduler, far more pending jobs than free slots: a backlog of 10k or
100k jobs (ages spread over 6 hours, 20% in five batches with alphas 0.5-0.8, 10% with deadlines
within 3 hours), 8 models with 100 or 1,000 free slots in all. The tick plans a window sized to
the free capacity (window_headroom x free slots); the "10k window" rows force a 10,000-job window
onto the same scarce fleet, the case that once took 23 s and 3.8 GB in the optimizer's repair.
Each row runs in its own process, and "rss" is that process's peak resident memory (the
scheduler's: the jobs are seeded by Postgres itself). Targets (issue 10), scarce rows: plan
<= 300 ms, tick <= 1 s, resident memory <= 500 MB.

Each size gets a fresh database with N pending jobs (20% in batches with a mean-quality target),
eight token-priced models with live heartbeats (the cheap ones' capacity below N, so capacity
rows bind), and a `switchyard` predictor fitted on 2,000 synthetic labelled outcomes (so
"predict" is the real featurise + calibrated score, not a prior). One tick runs through
Scheduler.tick with the real Celery dispatcher; the table is its per-stage wall time ("burst":
all N jobs arrived at once). Then the steady state ("pre-scored"): that window is done, N fresh
jobs arrive, the scheduler scores them between ticks (Scheduler.prescore, as its loop does while
it waits for the next tick), and the next tick runs.
Target (issue 4): 10k jobs in <= 2 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import redis
from sqlalchemy import insert, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.dispatch import CeleryDispatcher  # noqa: E402
from scheduler.fleet import load_fleet  # noqa: E402
from scheduler.learning.learner import Learner, fit_predictor  # noqa: E402
from scheduler.learning.training import TrainingSet  # noqa: E402
from scheduler.loop import Scheduler, default_policy  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.storage import Beat, Database, HeartbeatStore, JobStatus, utcnow  # noqa: E402
from scheduler.storage.migrate import upgrade_database  # noqa: E402
from scheduler.storage.tables import Batch, Job  # noqa: E402
from scheduler.queues import make_celery  # noqa: E402

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"
TOPICS = ["capital of", "integral of", "translate", "summarise", "python function", "prove that",
          "recipe for", "history of"]
# (name, $/Mtok in, $/Mtok out, quality prior): a spread like a real mixed fleet.
MODELS = [("tiny", 0.02, 0.05, 0.30), ("small", 0.1, 0.2, 0.45), ("mid-a", 0.3, 0.6, 0.55), ("mid-b", 0.5, 1.0, 0.6),
          ("large-a", 1.0, 3.0, 0.7), ("large-b", 3.0, 10.0, 0.78), ("frontier-a", 5.0, 15.0, 0.85),
          ("frontier-b", 10.0, 30.0, 0.9)]


def fleet_file(directory: Path, num_jobs: int, free_slots: int | None = None) -> Path:
    """Ample (free_slots None): the cheap models cannot take everything, the dear ones can.
    Scarce: ``free_slots`` in all, spread evenly over the eight models."""
    lines = []
    for k, (name, price_in, price_out, prior) in enumerate(MODELS):
        if free_slots is not None:
            capacity = free_slots // len(MODELS) + (1 if k < free_slots % len(MODELS) else 0)
        else:
            capacity = max(1, num_jobs // 8) if k < 4 else num_jobs   # cheap models cannot take everything
        lines.append(f'[[models]]\nname = "{name}"\nbackend = "openai"\nweights = "{name}"\n'
                     f"usd_per_mtok_input = {price_in}\nusd_per_mtok_output = {price_out}\n"
                     f"capacity_jobs = {capacity}\nmax_batch_jobs = 32\nquality_prior = {prior}\n")
    path = directory / "fleet.toml"
    path.write_text("\n".join(lines))
    return path


VOCABULARY = [f"w{k}" for k in range(3000)]


def prompt(rng: np.random.Generator, i: int) -> str:
    # A topic plus a few of 3,000 words: prompts (and so predictions) differ job to job, as they do
    # in real traffic, instead of collapsing into eight identical rows that tie in the optimizer.
    words = " ".join(VOCABULARY[k] for k in rng.integers(len(VOCABULARY), size=6))
    return f"Question {i}: {TOPICS[rng.integers(len(TOPICS))]} {words}"


def synthetic_training(rng: np.random.Generator, n: int = 2000) -> TrainingSet:
    prompts = [prompt(rng, i) for i in range(n)]
    topic = np.array([next(k for k, t in enumerate(TOPICS) if t in p) for p in prompts])
    word = np.array([int(p.split()[-1][1:]) for p in prompts])   # the last word shifts each model's skill too
    skill = (np.array([m[3] for m in MODELS])[None, :] + 0.15 * np.sin(topic[:, None] + np.arange(len(MODELS)))
             + 0.1 * np.cos(word[:, None] * (1 + np.arange(len(MODELS)))))
    scores = (rng.random((n, len(MODELS))) < np.clip(skill, 0.02, 0.98)).astype(float)
    scores[rng.random(scores.shape) < 0.5] = np.nan   # each query seen on about half the models
    tokens = rng.integers(20, 300, size=scores.shape).astype(float)
    return TrainingSet(prompts, scores, tokens, [m[0] for m in MODELS])


def fresh_database() -> str:
    name = f"switchyard_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(db: Database, num_jobs: int, rng: np.random.Generator) -> None:
    now = utcnow()
    batches = [{"id": str(uuid.uuid4()), "owner": "bench", "name": f"b{k}", "alpha": 0.65, "max_cost_usd": None,
                "num_jobs": 0, "idempotency_key": None, "request_hash": "x", "created_at": now} for k in range(10)]
    rows = []
    for i in range(num_jobs):
        batch = batches[i % 50]["id"] if i % 50 < 10 else None   # 20% of jobs in alpha batches
        rows.append({"id": str(uuid.uuid4()), "batch_id": batch, "owner": "bench", "status": JobStatus.PENDING,
                     "prompt": prompt(rng, i), "max_tokens": 256, "temperature": 0.0, "attempts": 0,
                     "request_hash": "x", "on_deadline_miss": "run_late", "created_at": now, "updated_at": now})
    with db.session() as session:
        session.execute(insert(Batch), batches)
        for start in range(0, len(rows), 5000):
            session.execute(insert(Job), rows[start:start + 5000])


SEED_SQL = """
WITH words AS (SELECT array_agg('w' || k) AS w FROM generate_series(0, 2999) AS k),
     topics AS (SELECT ARRAY['capital of', 'integral of', 'translate', 'summarise', 'python function',
                             'prove that', 'recipe for', 'history of'] AS t)
INSERT INTO jobs (id, batch_id, owner, status, prompt, max_tokens, temperature, attempts, request_hash,
                  on_deadline_miss, created_at, updated_at, expires_at, deadline_at)
SELECT gen_random_uuid()::text,
       CASE WHEN i %% 5 = 0 THEN (%(batches)s::text[])[1 + (i / 5) %% 5] END,
       'bench', 'pending',
       'Question ' || i || ': ' || t[1 + (i * 7919) %% 8] || ' ' || w[1 + (i * 104729) %% 3000] || ' '
         || w[1 + (i * 1299709) %% 3000] || ' ' || w[1 + (i * 15485863) %% 3000] || ' ' || w[1 + (i * 49979687) %% 3000],
       256, 0.0, 0, 'x', 'run_late', c, c, c + interval '24 hours',
       CASE WHEN i %% 10 = 3 THEN now() + (i %% 1000) * interval '10.8 seconds' END
FROM generate_series(1::bigint, %(n)s::bigint) AS i, words, topics,
     LATERAL (SELECT now() - ((i * 2654435761) %% 21600) * interval '1 second' AS c) AS ages
"""


def seed_backlog(url: str, num_jobs: int) -> None:
    """``num_jobs`` pending jobs written by Postgres itself (so the benchmark process holds only
    what the scheduler holds): ages spread over 6 hours, 20% in five batches with alphas 0.5-0.8,
    10% with deadlines within 3 hours."""
    batch_ids = [str(uuid.uuid4()) for _ in range(5)]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for k, batch_id in enumerate(batch_ids):
            conn.execute("INSERT INTO batches (id, owner, name, alpha, num_jobs, request_hash, created_at) "
                         "VALUES (%s, 'bench', %s, %s, 0, 'x', now())", (batch_id, f"b{k}", 0.5 + 0.075 * k))
        conn.execute(SEED_SQL, {"batches": batch_ids, "n": num_jobs})
        conn.execute("ANALYZE jobs")


def workers_report_in(db: Database) -> None:
    now = utcnow()
    beats = HeartbeatStore(db)
    for name, *_ in MODELS:
        beats.beat(Beat(worker_id=f"{name}@bench:1", model=name, host="bench", pid=1, concurrency=1, jobs_done=0,
                        tokens_per_s=None, mean_latency_s=None, started_at=now), now)


def run(num_jobs: int, workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Ample capacity: a burst of N jobs, then (the first window done) N fresh jobs, pre-scored."""
    rng = np.random.default_rng(num_jobs)

    def make_settings(url: str) -> Settings:
        return Settings(database_url=url, broker_url=REDIS_URL, fleet_file=fleet_file(workdir, num_jobs),
                        window_max_jobs=num_jobs, plan_horizon_s=86_400, predictor_dir=workdir / f"p{num_jobs}",
                        exploration_target_labels=0)

    return two_ticks(rng, make_settings, seed_first=lambda db: seed(db, num_jobs, rng),
                     seed_next=lambda db: seed(db, num_jobs, rng))


@dataclass(frozen=True)
class ScarceCase:
    backlog: int
    free_slots: int
    forced_window: int | None = None   # plan this many jobs whatever the free capacity

    @property
    def label(self) -> str:
        window = f"{self.forced_window // 1000}k window" if self.forced_window else "sized"
        return f"{self.backlog // 1000}k/{self.free_slots}/{window}"


def run_scarce(case: ScarceCase, workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """A backlog with scarce capacity: a first tick (nothing scored yet), then the steady state:
    the dispatched jobs finish, the scheduler pre-scores the next window between ticks, and the
    next tick runs (the backlog is still there: nothing new needs to arrive)."""
    rng = np.random.default_rng(case.backlog + case.free_slots)

    def make_settings(url: str) -> Settings:
        return Settings(database_url=url, broker_url=REDIS_URL,
                        fleet_file=fleet_file(workdir, case.backlog, case.free_slots),
                        window_max_jobs=case.forced_window or 10_000, window_min_jobs=case.forced_window or 64,
                        plan_horizon_s=86_400, predictor_dir=workdir / f"p-{uuid.uuid4().hex[:6]}",
                        exploration_target_labels=0)

    return two_ticks(rng, make_settings, seed_first=lambda db: seed_backlog(db.url, case.backlog),
                     seed_next=lambda db: None)


def two_ticks(rng: np.random.Generator, make_settings: Callable[[str], Settings],
              seed_first: Callable[[Database], None], seed_next: Callable[[Database], None]
              ) -> tuple[dict[str, float], dict[str, float]]:
    """On a fresh database: a tick on a window nobody scored yet; then the dispatched jobs finish,
    ``seed_next`` adds work, the scheduler scores the next window while it waits (as its loop does:
    Scheduler.prescore, outside the tick) and the next tick runs. Both ticks' stage times."""
    name = fresh_database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_database(url)
        settings = make_settings(url)
        db = Database(url)
        seed_first(db)
        fleet = load_fleet(settings.fleet_file)
        learner = Learner(settings, db, fleet)
        learner.versions.save(fit_predictor("switchyard", synthetic_training(rng)), utcnow())
        workers_report_in(db)
        scheduler = Scheduler(settings, db, fleet, default_policy(fleet, settings),
                              CeleryDispatcher(make_celery(settings)), learner)
        redis.Redis.from_url(REDIS_URL).flushdb()
        first = timed_tick(scheduler)
        with db.session() as session:
            session.execute(update(Job).where(Job.status == JobStatus.QUEUED).values(status=JobStatus.SUCCEEDED))
        seed_next(db)
        workers_report_in(db)   # a large burst outlasts the heartbeat TTL
        redis.Redis.from_url(REDIS_URL).flushdb()
        start = time.perf_counter()
        scheduler.prescore()
        prescore_s = time.perf_counter() - start
        steady = timed_tick(scheduler)
        steady["prescore"] = prescore_s
        db.dispose()
        return first, steady
    finally:
        drop_database(name)
        redis.Redis.from_url(REDIS_URL).flushdb()


def timed_tick(scheduler: Scheduler) -> dict[str, float]:
    start = time.perf_counter()
    report = scheduler.tick()
    stages = dict(report.stage_s)
    stages["total"] = time.perf_counter() - start
    stages["assigned"] = len(report.plan.assignments)
    stages["window"] = report.window_jobs
    stages["tasks"] = report.publish.published if report.publish else 0
    if not report.plan.assignments:
        raise SystemExit(f"nothing assigned: {report.plan.deferrals[:1]} {report.plan.notes}")
    return stages


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per stage, the median over repeated runs (the shared machine is noisy)."""
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


SCARCE_CASES = [ScarceCase(10_000, 1000), ScarceCase(10_000, 100), ScarceCase(100_000, 1000),
                ScarceCase(100_000, 100), ScarceCase(10_000, 128, forced_window=10_000),
                ScarceCase(100_000, 1000, forced_window=10_000)]


def run_in_child(args: list[str]) -> dict[str, object]:
    """One row in a fresh process, so its peak resident memory is that row's alone."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.scenario == "ample":
            first, steady = run(args.size, Path(tmp))
        else:
            first, steady = run_scarce(ScarceCase(args.size, args.free_slots, args.forced_window), Path(tmp))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first": first, "steady": steady, "rss_mb": rss_mb}))


STAGES = ("recover", "claim", "plan", "commit", "publish", "total")


def print_rows(label: str, runs: list[dict[str, object]], names: tuple[str, str]) -> None:
    for key, name in zip(("first", "steady"), names, strict=True):
        stage_runs = [r[key] for r in runs]
        totals = [float(r["total"]) for r in stage_runs]  # type: ignore[index]
        s = median_stages(stage_runs)  # type: ignore[arg-type]
        prescore = f"{s['prescore'] * 1e3:>7.0f}ms" if "prescore" in s else f"{'-':>9}"
        spread = f"{min(totals) * 1e3:>6.0f}-{max(totals) * 1e3:.0f}ms"
        rss = max(float(r["rss_mb"]) for r in runs)  # type: ignore[arg-type]
        print(f"{label:>20} {name:>10} {int(s['window']):>7} {int(s['assigned']):>8} {int(s['tasks']):>6} {prescore} "
              + " ".join(f"{s[stage] * 1e3:>6.0f}ms" for stage in STAGES) + f" {spread:>15} {rss:>6.0f}MB",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["ample", "scarce", "both"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000],
                        help="ample scenario: pending jobs per row")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per row (a fresh database and process each); the table shows per-stage medians")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--free-slots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--forced-window", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    repeats = max(1, args.repeats)
    print(f"{'row':>20} {'tick':>10} {'window':>7} {'assigned':>8} {'tasks':>6} {'prescore':>9} "
          + " ".join(f"{stage:>8}" for stage in STAGES) + f" {'total range':>15} {'rss':>8}")
    if args.scenario in ("ample", "both"):
        for size in args.sizes:
            runs = [run_in_child(["--scenario", "ample", "--size", str(size)]) for _ in range(repeats)]
            print_rows(f"ample {size // 1000}k", runs, ("burst", "pre-scored"))
    if args.scenario in ("scarce", "both"):
        for case in SCARCE_CASES:
            extra = ["--forced-window", str(case.forced_window)] if case.forced_window else []
            runs = [run_in_child(["--scenario", "scarce", "--size", str(case.backlog),
                                  "--free-slots", str(case.free_slots), *extra]) for _ in range(repeats)]
            print_rows(f"scarce {case.label}", runs, ("first", "steady"))
    print("ample: capacity for every job; burst = all N arrive at once and the tick scores them all;\n"
          "pre-scored = the scheduler scored the window between ticks (Scheduler.prescore, its own column).\n"
          "scarce ROW = backlog/free slots/window: 'sized' = window_headroom x free slots (default 4x), or a\n"
          "forced 10k window; first = the first tick (nothing scored yet), steady = after the dispatched jobs\n"
          "finished and the next window was pre-scored. plan = predict + estimates + eligibility + solve.\n"
          "Targets: ample 10k <= 2 s total; scarce: plan <= 300 ms, tick <= 1 s, rss <= 500 MB.\n"
          "With --repeats R, each stage is the median of R runs and 'total range' the fastest-slowest tick.")


if __name__ == "__main__":
    main()
