"""The batch task and the per-process state of a worker that hosts one model.

``switchyard worker --model NAME`` starts a Celery worker consuming ``model.NAME``. Each pool
process loads the model once (at ``worker_process_init``, after the fork, so it owns its engine
and database connections), then runs micro-batches back to back.

Each pool process also serves its own Prometheus ``/metrics`` when a metrics port is set: at that
port plus its pool index (0..concurrency-1; a process the pool replaces takes over its index,
so the ports stay fixed for Prometheus). A solo worker serves at the port itself.
"""
from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from scheduler.fleet import BackendKind, ModelSpec, load_fleet
from scheduler.metrics import MetricsServer, WorkerMetrics, new_registry, serve_metrics
from scheduler.settings import Settings
from scheduler.storage import Database, HeartbeatStore, ResultStore, utcnow
from workers.backends import make_backend
from scheduler.queues import TASK_NAME, queue_name
from workers.heartbeat import Heartbeat, WorkerStats
from workers.inflight import InFlight
from workers.runner import FAILURE_KINDS, BatchRunner, BatchStats

log = logging.getLogger(__name__)


class WorkerProcess:
    """Everything one worker process hosts: the model engine, the store, the heartbeat."""

    def __init__(self, settings: Settings, spec: ModelSpec, metrics_port: int = 0) -> None:
        """``metrics_port``: where this process serves /metrics (0: nowhere)."""
        self.spec = spec
        # No pre-ping: the runner retries through outages anyway, and a ping per checkout was a
        # third of the per-job round trips.
        self.db = Database(settings.database_url, pre_ping=False)
        self.backend = make_backend(self.spec, settings)
        self.stats = WorkerStats()
        results = ResultStore(self.db)
        in_flight = InFlight()
        self.metrics = WorkerMetrics(new_registry(), spec.name, FAILURE_KINDS,
                                     tokens_per_s=lambda: self.stats.snapshot()[1],
                                     running_jobs=lambda: len(in_flight.renewable()))
        self.heartbeat = Heartbeat(HeartbeatStore(self.db), results, in_flight, spec.name, self.stats,
                                   settings.heartbeat_interval_s, settings.run_lease_s, utcnow,
                                   concurrency=self.spec.concurrency if self.backend.batches_natively else 1,
                                   metrics=self.metrics)
        self.runner = BatchRunner(results, self.backend, self.spec, self.heartbeat.worker_id,
                                  settings.run_lease_s, settings.max_attempts, utcnow, in_flight)
        self.metrics_server: MetricsServer | None = None
        if metrics_port:
            self.metrics_server = serve_metrics(self.metrics.registry, settings.metrics_host, metrics_port,
                                                f"worker process {os.getpid()} ({spec.name})")
        self.heartbeat.start()

    def record(self, stats: BatchStats) -> None:
        """One micro-batch's outcome: into the heartbeat's measurements and the metrics."""
        self.stats.add(stats.succeeded, stats.output_tokens, stats.generation_s)
        self.metrics.observe_batch(latencies_s=stats.latencies_s, failures=stats.failures, skipped=stats.skipped,
                                   input_tokens=stats.input_tokens, output_tokens=stats.output_tokens,
                                   cost_usd=stats.cost_usd)

    def close(self) -> None:
        self.heartbeat.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.backend.close()
        self.db.dispose()


def pool_index() -> int:
    """This process's index in its Celery prefork pool (billiard gives each child one, and a
    replacement child the index of the one it replaces); 0 in the main process (solo pool)."""
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)


def pool_for(spec: ModelSpec) -> str:
    """vLLM starts engine processes of its own, which Celery's daemonic prefork children may not
    have: a GPU worker runs its engine in the worker's main process (the solo pool) instead."""
    return "solo" if spec.backend is BackendKind.VLLM else "prefork"


def register_tasks(app: Celery, settings: Settings, spec: ModelSpec, pool: str, metrics_port: int = 0) -> None:
    """Attach the batch task to ``app`` for a worker hosting ``spec``'s model in a ``pool`` worker.
    ``metrics_port``: the first pool process's /metrics port (0: none)."""
    hosted: dict[str, WorkerProcess] = {}
    model = spec.name

    def process() -> WorkerProcess:
        if "process" not in hosted:
            hosted["process"] = WorkerProcess(settings, spec, metrics_port + pool_index() if metrics_port else 0)
            log.info("worker process %d hosts %s", os.getpid(), model)
        return hosted["process"]

    # Load the model before taking work, so a worker reports in (heartbeat) only once it can run jobs:
    # in each prefork child after the fork, or in the main process for the solo pool.
    @worker_process_init.connect(weak=False)
    def _load_model(**_: object) -> None:
        process()

    if pool == "solo":
        @worker_ready.connect(weak=False)
        def _load_model_solo(**_: object) -> None:
            process()

        @worker_shutdown.connect(weak=False)
        def _unload_model_solo(**_: object) -> None:
            if "process" in hosted:
                hosted.pop("process").close()

    @worker_process_shutdown.connect(weak=False)
    def _unload_model(**_: object) -> None:
        if "process" in hosted:
            hosted.pop("process").close()

    # A hang inside native code never returns to Python; past this the pool process is replaced
    # and the jobs' leases (no longer renewed) hand them to another run.
    hard_limit_s = spec.job_timeout_s * (spec.max_batch_jobs + 1) + 60

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, time_limit=hard_limit_s)
    def run_batch(dispatch_id: str, model: str, job_ids: list[str]) -> dict[str, int]:
        worker = process()
        if model != worker.spec.name:
            # A message on the wrong queue: leave the jobs to their lease rather than run the wrong model.
            log.error("dispatch %s is for %s but this worker hosts %s", dispatch_id, model, worker.spec.name)
            return {"skipped": len(job_ids)}
        stats = worker.runner.run(dispatch_id, job_ids)
        worker.record(stats)
        log.info("dispatch %s on %s: %s", dispatch_id, model, stats)
        return {"succeeded": stats.succeeded, "failed": stats.failed, "skipped": stats.skipped}


def worker_argv(model: str, concurrency: int, loglevel: str, pool: str = "prefork") -> list[str]:
    # -E: task events for Flower. A unique node name lets several workers host one model.
    return ["worker", "-Q", queue_name(model), "-c", str(concurrency), "-P", pool, "-E",
            "-n", f"{model}-{os.getpid()}@%h", "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


def run_worker(settings: Settings, model: str, concurrency: int, loglevel: str = "INFO",
               pool: str | None = None, metrics_port: int | None = None) -> None:
    """``metrics_port``: the first pool process's /metrics port (None: ``worker_metrics_port``)."""
    from scheduler.queues import make_celery

    # The fleet file is read once, here, before the fork: every pool process inherits the spec.
    spec = load_fleet(settings.fleet_file).get(model)  # fails fast on an unknown model
    pool = pool or pool_for(spec)
    app = make_celery(settings)
    register_tasks(app, settings, spec, pool, settings.worker_metrics_port if metrics_port is None else metrics_port)
    app.worker_main(worker_argv(model, 1 if pool == "solo" else concurrency, loglevel, pool))
