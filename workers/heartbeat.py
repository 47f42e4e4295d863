"""A background thread: this worker process is alive, here is what it measured, and the leases of
the jobs it is running are renewed (so a dead worker's jobs are retried within one run lease)."""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable

from scheduler.metrics import WorkerMetrics
from scheduler.storage import Beat, HeartbeatStore, ResultStore
from workers.inflight import InFlight

log = logging.getLogger(__name__)


class WorkerStats:
    """What this process measured: jobs done, and exponentially weighted tokens/s and latency.

    The weighting follows the model's recent behaviour (load, prompt mix) rather than its lifetime
    average; the tick reads these through the heartbeat to size each model's capacity.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self._lock = threading.Lock()
        self.smoothing = smoothing
        self.jobs_done = 0
        self.tokens_per_s: float | None = None
        self.latency_s: float | None = None

    def add(self, jobs: int, output_tokens: int, generation_s: float) -> None:
        if jobs <= 0 or generation_s <= 0:
            return
        with self._lock:
            self.jobs_done += jobs
            self.tokens_per_s = self._blend(self.tokens_per_s, output_tokens / generation_s)
            self.latency_s = self._blend(self.latency_s, generation_s / jobs)

    def snapshot(self) -> tuple[int, float | None, float | None]:
        with self._lock:
            return self.jobs_done, self.tokens_per_s, self.latency_s

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new


class Heartbeat:
    def __init__(self, store: HeartbeatStore, results: ResultStore, in_flight: InFlight, model: str,
                 stats: WorkerStats, interval_s: float, run_lease_s: float,
                 clock: Callable[[], dt.datetime], concurrency: int = 1,
                 metrics: WorkerMetrics | None = None) -> None:
        self.concurrency = concurrency
        self.metrics = metrics
        self.store = store
        self.results = results
        self.in_flight = in_flight
        self.run_lease_s = run_lease_s
        self.model = model
        self.stats = stats
        self.interval_s = interval_s
        self.clock = clock
        self.worker_id = f"{model}@{socket.gethostname()}:{os.getpid()}"
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="switchyard-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat_once()
        self._thread.start()

    def beat_once(self) -> None:
        now = self.clock()
        self.results.extend_leases(self.in_flight.renewable(), now + dt.timedelta(seconds=self.run_lease_s))
        jobs_done, tokens_per_s, mean_latency_s = self.stats.snapshot()
        self.store.beat(Beat(worker_id=self.worker_id, model=self.model, host=socket.gethostname(),
                             pid=os.getpid(), concurrency=self.concurrency, jobs_done=jobs_done, tokens_per_s=tokens_per_s,
                             mean_latency_s=mean_latency_s, started_at=self.started_at), now)
        if self.metrics is not None:
            self.metrics.observe_heartbeat(ok=True)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.store.remove(self.worker_id)
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown; the TTL covers it
            log.warning("could not remove heartbeat of %s: %s", self.worker_id, exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_once()
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the worker
                log.warning("heartbeat failed: %s", exc)
                if self.metrics is not None:
                    self.metrics.observe_heartbeat(ok=False)
