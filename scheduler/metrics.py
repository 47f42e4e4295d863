"""Every Prometheus metric Switchyard exposes, in one place.

Three kinds of process serve ``/metrics`` in the Prometheus text format:

* the API, on its own port (``GET /metrics``, no key: it holds no tenant data);
* the scheduler, on ``scheduler_metrics_port`` (every replica; the one that leads reports the
  ticks, and only it reads the store at scrape time, so replicas never double-count);
* every worker pool process, on ``worker_metrics_port`` plus its pool index. Each process
  counts what it ran and serves it itself: no shared directory, no aggregation step, and a
  process the pool replaces starts its counters afresh, which ``rate()`` reads as a reset.

Each process builds its metrics on a registry of its own (``new_registry``), never the
library's global one, so an app or scheduler made twice in one process (tests) cannot clash.
Label values are bounded sets: route templates, never raw paths; deferral reasons mapped to a
few kinds; failure kinds; fleet models; and only capped tenants and batches (at most
``metrics_max_spend_series`` of each).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST, GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge,
    Histogram, Info, generate_latest, start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.plan import Assignment, Deferral, Ending
from scheduler.policy import (
    BATCH_BUDGET_REASON, BATCH_QUALITY_REASON, CAPACITY_REASON, FAIR_SHARE_REASON, MAX_COST_REASON,
    MIN_QUALITY_REASON, NO_LIVE_WORKER_REASON, TENANT_BUDGET_REASON,
)
from scheduler.storage.monitoring import MonitoringStore, StoreSnapshot
from scheduler.storage.types import utcnow

if TYPE_CHECKING:
    from scheduler.tick import TickReport

log = logging.getLogger(__name__)

TICK_STAGES = ("recover", "claim", "plan", "commit", "publish")
# Why a job was not assigned this tick, as a few kinds (the reasons' texts are for people).
DEFERRAL_KINDS: dict[str, str] = {
    CAPACITY_REASON: "capacity", FAIR_SHARE_REASON: "fair_share", BATCH_BUDGET_REASON: "batch_budget",
    TENANT_BUDGET_REASON: "tenant_budget", NO_LIVE_WORKER_REASON: "no_live_worker",
    MIN_QUALITY_REASON: "min_quality", MAX_COST_REASON: "max_cost", BATCH_QUALITY_REASON: "batch_quality",
}
ENDING_KINDS = {Ending.EXPIRED: "expired", Ending.FAILED: "never_servable"}
OTHER = "other"
ASSIGNMENT_KINDS = ("planned", "exploring", "late")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

# Seconds: an API call (interactive completions wait for their answer, up to 10 minutes), a tick
# stage or a solve (milliseconds to seconds), a job on a model (up to its timeout).
API_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
JOB_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# A scrape reads the store at most this often (Prometheus and a person may both be asking).
STORE_CACHE_S = 5.0


def new_registry() -> CollectorRegistry:
    """A registry with the standard process, platform and garbage-collector metrics."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


@dataclass
class MetricsServer:
    """The HTTP server of a scheduler's or worker process's /metrics (a daemon thread)."""

    server: WSGIServer
    thread: threading.Thread
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(registry: CollectorRegistry, host: str, port: int, what: str) -> MetricsServer | None:
    """Serve ``registry`` on host:port. A port that is taken is logged and skipped: metrics are
    never a reason for the scheduler or a worker not to run."""
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        log.warning("%s: cannot serve /metrics on %s:%d (%s); running without it", what, host, port, exc)
        return None
    log.info("%s serves Prometheus metrics on http://%s:%d/metrics", what, host, port)
    return MetricsServer(server, thread, port)


def deferral_kind(deferral: Deferral) -> str:
    if deferral.ending is not None:
        return ENDING_KINDS[deferral.ending]
    return DEFERRAL_KINDS.get(deferral.reason, OTHER)


def assignment_kind(assignment: Assignment) -> str:
    return "exploring" if assignment.exploring else "late" if assignment.late else "planned"


# -- the API ------------------------------------------------------------------------------------
class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("switchyard_api_requests_total", "HTTP requests answered, by method, route "
                                "template and status code.", ["method", "route", "status"], registry=registry)
        self.duration = Histogram("switchyard_api_request_duration_seconds", "Seconds from request to the end of "
                                  "the response, by method and route template.", ["method", "route"],
                                  buckets=API_BUCKETS_S, registry=registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else OTHER
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)


# -- the scheduler ------------------------------------------------------------------------------
class SchedulerMetrics:
    """What the scheduler's loop records after each tick, plus the store's state at scrape time."""

    def __init__(self, registry: CollectorRegistry, model_names: Sequence[str],
                 store: MonitoringStore | None = None, *, quality_window_s: float = 3600.0,
                 max_spend_series: int = 50) -> None:
        self.registry = registry
        self.leading = False
        r = registry
        self.ticks = Counter("switchyard_scheduler_ticks_total", "Ticks committed by this scheduler.", registry=r)
        self.tick_failures = Counter("switchyard_scheduler_tick_failures_total", "Ticks that failed (an outage or "
                                     "an error; retried with backoff).", registry=r)
        self.tick_duration = Histogram("switchyard_scheduler_tick_duration_seconds", "Seconds per tick, all "
                                       "stages.", buckets=TICK_BUCKETS_S, registry=r)
        self.tick_stage = Histogram("switchyard_scheduler_tick_stage_seconds", "Seconds per tick stage: recover, "
                                    "claim, plan (predict + solve), commit, publish.", ["stage"],
                                    buckets=TICK_BUCKETS_S, registry=r)
        self.last_tick = Gauge("switchyard_scheduler_last_tick_timestamp_seconds", "Unix time of the last "
                               "committed tick.", registry=r)
        self.window_jobs = Gauge("switchyard_scheduler_window_jobs", "Pending jobs the last tick claimed and "
                                 "planned.", registry=r)
        self.assigned = Counter("switchyard_scheduler_assigned_jobs_total", "Jobs dispatched to a model, by kind: "
                                "planned (the optimizer's choice), exploring (sent to try a little-tried model), "
                                "late (no model meets the deadline: the fastest).", ["model", "kind"], registry=r)
        self.promised = Counter("switchyard_scheduler_promised_quality_total", "Sum of the predicted success "
                                "of jobs dispatched on a promise (planned and late; divide by their "
                                "switchyard_scheduler_assigned_jobs_total for the mean).", ["model"], registry=r)
        self.deferred = Counter("switchyard_scheduler_deferred_jobs_total", "Deferral decisions (a job waiting "
                                "through many ticks counts in each), by reason kind; expired and never_servable "
                                "end the job.", ["reason"], registry=r)
        self.window_deferred = Gauge("switchyard_scheduler_window_deferred_jobs", "Jobs of the last tick's window "
                                     "not assigned, by reason kind.", ["reason"], registry=r)
        self.solve = Histogram("switchyard_scheduler_solver_seconds", "Seconds the optimizer took per window, by "
                               "method (exact: HiGHS MILP; fast: Lagrangian).", ["solver"], buckets=TICK_BUCKETS_S,
                               registry=r)
        self.solves = Counter("switchyard_scheduler_solves_total", "Windows solved, by method and status "
                              "(optimal, feasible: gap below; relaxed: a constraint could not hold).",
                              ["solver", "status"], registry=r)
        self.objective = Gauge("switchyard_scheduler_plan_objective_usd", "The last plan's objective: predicted "
                               "cost plus deferral penalties.", registry=r)
        self.gap_usd = Gauge("switchyard_scheduler_plan_gap_usd", "The last plan's proven optimality gap: "
                             "objective minus the solver's lower bound.", registry=r)
        self.gap_ratio = Gauge("switchyard_scheduler_plan_gap_ratio", "The last plan's gap relative to its "
                               "objective.", registry=r)
        self.leader = Gauge("switchyard_scheduler_leader", "1 while this scheduler leads the ticks, else 0.",
                            registry=r)
        self.epoch = Gauge("switchyard_scheduler_leader_epoch", "The epoch this scheduler last led under.",
                           registry=r)
        self.recovered = Counter("switchyard_scheduler_recovered_jobs_total", "Jobs the tick's recovery moved: "
                                 "requeued (lease ran out), failed (out of attempts), expired (pending past "
                                 "max_pending).", ["outcome"], registry=r)
        self.lost = Counter("switchyard_scheduler_lost_message_jobs_total", "Queued jobs re-planned because "
                            "their broker message was lost.", registry=r)
        self.published = Counter("switchyard_scheduler_published_tasks_total", "Micro-batch messages published "
                                 "to the broker, by model.", ["model"], registry=r)
        self.publish_failed = Counter("switchyard_scheduler_publish_failures_total", "Micro-batch messages that "
                                      "could not be published (their lease retries them).", ["model"], registry=r)
        self.live_slots = Gauge("switchyard_model_live_slots", "Worker processes with a fresh heartbeat, by "
                                "model.", ["model"], registry=r)
        self.backlog = Gauge("switchyard_model_backlog_jobs", "Jobs queued or running on the model.", ["model"],
                             registry=r)
        self.model_tokens_per_s = Gauge("switchyard_model_tokens_per_second", "Generation speed the model's "
                                        "workers measured (exponentially weighted; absent before any job).",
                                        ["model"], registry=r)
        self.predictor = Info("switchyard_predictor", "The predictor version the ticks use (prior: none fitted "
                              "yet).", registry=r)
        self.labels = Gauge("switchyard_predictor_labels", "Outcome labels the scheduler knows per model "
                            "(feedback, or what the loaded predictor was fitted on when more).", ["model"],
                            registry=r)
        self.promise_margin = Gauge("switchyard_scheduler_promise_margin_ratio", "What the promise check adds to "
                                    "every batch's alpha (0 while off).", registry=r)
        self.store_failures = Counter("switchyard_scheduler_store_scrape_failures_total", "Scrapes whose read of "
                                      "the job store failed (those gauges are left out of that scrape).",
                                      registry=r)
        self.models = tuple(model_names)
        for stage in TICK_STAGES:
            self.tick_stage.labels(stage)
        for model in self.models:
            self.promised.labels(model)
            for kind in ASSIGNMENT_KINDS:
                self.assigned.labels(model, kind)
        for kind in (*DEFERRAL_KINDS.values(), *ENDING_KINDS.values(), OTHER):
            self.deferred.labels(kind)
        for outcome in ("requeued", "failed", "expired"):
            self.recovered.labels(outcome)
        self.leader.set(0)
        if store is not None:
            registry.register(StoreCollector(store, lambda: self.leading, self.store_failures,
                                             quality_window_s=quality_window_s, max_series=max_spend_series))

    def set_leading(self, epoch: int | None) -> None:
        """``epoch``: the term this scheduler now leads under, or None while it stands by (the
        state of the last tick it led is then withdrawn: the leader's is the current one)."""
        self.leading = epoch is not None
        self.leader.set(1 if self.leading else 0)
        if epoch is not None:
            self.epoch.set(epoch)
            return
        for gauge in (self.live_slots, self.backlog, self.model_tokens_per_s, self.window_deferred, self.labels):
            gauge.clear()

    def observe_tick(self, report: TickReport) -> None:
        plan = report.plan
        self.ticks.inc()
        self.last_tick.set(time.time())
        for stage, seconds in report.stage_s.items():
            self.tick_stage.labels(stage).observe(seconds)
        self.tick_duration.observe(sum(report.stage_s.values()))
        self.window_jobs.set(report.window_jobs)
        promised: dict[str, float] = defaultdict(float)
        for (model, kind), count in Tally((a.model, assignment_kind(a)) for a in plan.assignments).items():
            self.assigned.labels(model, kind).inc(count)
        for assignment in plan.assignments:
            if not assignment.exploring:
                promised[assignment.model] += assignment.predicted_quality
        for model, total in promised.items():
            self.promised.labels(model).inc(total)
        deferred = Tally(deferral_kind(d) for d in plan.deferrals)
        self.window_deferred.clear()
        for kind, count in deferred.items():
            self.deferred.labels(kind).inc(count)
            self.window_deferred.labels(kind).set(count)
        if plan.solver:
            self.solve.labels(plan.solver).observe(plan.solve_s)
            self.solves.labels(plan.solver, plan.solver_status).inc()
            gap = max(0.0, plan.objective_usd - plan.lower_bound_usd)
            self.objective.set(plan.objective_usd)
            self.gap_usd.set(gap)
            self.gap_ratio.set(gap / abs(plan.objective_usd) if plan.objective_usd else 0.0)
        self.recovered.labels("requeued").inc(report.recovery.requeued)
        self.recovered.labels("failed").inc(report.recovery.failed)
        self.recovered.labels("expired").inc(report.recovery.expired)
        if report.publish is not None:
            failed = Tally(dispatch.model for dispatch, _ in report.publish.failed)
            for model, count in Tally(d.model for d in report.dispatches).items():
                self.published.labels(model).inc(count - failed.get(model, 0))
            for model, count in failed.items():
                self.publish_failed.labels(model).inc(count)
        for state in report.states:
            self.live_slots.labels(state.name).set(state.live_workers)
            self.backlog.labels(state.name).set(state.backlog_jobs)
            if state.tokens_per_s is not None:
                self.model_tokens_per_s.labels(state.name).set(state.tokens_per_s)

    def observe_learning(self, version: str | None, label_counts: Mapping[str, int], promise_margin: float) -> None:
        self.predictor.info({"version": version or "prior"})
        for model, count in label_counts.items():
            self.labels.labels(model).set(count)
        self.promise_margin.set(promise_margin)

    def observe_lost_messages(self, replanned: int) -> None:
        self.lost.inc(replanned)


class StoreCollector(Collector):
    """Gauges read from the job store when Prometheus scrapes, by the leader only (a standby
    exports none, so summing over replicas never counts twice). See scheduler/storage/monitoring.py
    for how each read is bounded."""

    def __init__(self, store: MonitoringStore, leading: Callable[[], bool], failures: Counter, *,
                 quality_window_s: float, max_series: int) -> None:
        self.store = store
        self.leading = leading
        self.failures = failures
        self.quality_window_s = quality_window_s
        self.max_series = max_series
        self._lock = threading.Lock()
        self._cached: tuple[float, StoreSnapshot] | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        if not self.leading():
            return []
        snapshot = self._snapshot()
        return [] if snapshot is None else self._families(snapshot)

    def _snapshot(self) -> StoreSnapshot | None:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < STORE_CACHE_S:
                return self._cached[1]
            try:
                since = utcnow() - dt.timedelta(seconds=self.quality_window_s)
                snapshot = self.store.snapshot(since, self.max_series)
            except Exception as exc:  # noqa: BLE001 - a scrape during an outage answers without these
                self.failures.inc()
                log.debug("metrics: could not read the job store: %s", exc)
                return None
            self._cached = (time.monotonic(), snapshot)
            return snapshot

    def _families(self, snap: StoreSnapshot | None) -> list[Metric]:
        jobs = GaugeMetricFamily("switchyard_jobs", "Jobs waiting or running, by status (pending: not yet "
                                 "assigned; queued: dispatched, not started; running).", labels=["status"])
        spend: list[GaugeMetricFamily] = []
        for scope, labels in (("tenant", ["tenant"]), ("batch", ["batch", "tenant"])):
            what = "tenant with a max_spend_usd" if scope == "tenant" else "open batch with a max_cost_usd"
            spend += [GaugeMetricFamily(f"switchyard_{scope}_spent_usd", f"What the finished jobs of each {what} "
                                        "cost.", labels=labels),
                      GaugeMetricFamily(f"switchyard_{scope}_reserved_usd", f"Predicted cost of the queued and "
                                        f"running jobs of each {what} (held against its cap).", labels=labels),
                      GaugeMetricFamily(f"switchyard_{scope}_spend_cap_usd", f"The cap of each {what}.",
                                        labels=labels)]
        graded = GaugeMetricFamily("switchyard_graded_jobs", "Jobs graded within the quality window that the "
                                   "optimizer chose the model for, by model.", labels=["model"])
        promised = GaugeMetricFamily("switchyard_graded_promised_quality_ratio", "Their mean predicted success "
                                     "at dispatch.", labels=["model"])
        realised = GaugeMetricFamily("switchyard_graded_realised_quality_ratio", "Their mean score (grade or "
                                     "feedback).", labels=["model"])
        if snap is not None:
            for status, count in snap.jobs_by_status.items():
                jobs.add_metric([status], count)
            for rows, families, with_tenant in ((snap.tenants, spend[:3], False), (snap.batches, spend[3:], True)):
                for row in rows:
                    labels = [row.name, row.tenant] if with_tenant else [row.name]
                    for family, value in zip(families, (row.spent_usd, row.reserved_usd, row.cap_usd), strict=True):
                        family.add_metric(labels, value)
            for quality in snap.quality:
                graded.add_metric([quality.model], quality.graded_jobs)
                promised.add_metric([quality.model], quality.promised)
                realised.add_metric([quality.model], quality.realised)
        return [jobs, *spend, graded, promised, realised]


# -- the workers --------------------------------------------------------------------------------
class WorkerMetrics:
    """What one worker pool process ran. Every series carries the model it hosts."""

    def __init__(self, registry: CollectorRegistry, model: str, failure_kinds: Sequence[str] = (),
                 tokens_per_s: Callable[[], float | None] | None = None,
                 running_jobs: Callable[[], int] | None = None) -> None:
        self.registry = registry
        self.model = model
        r, m = registry, ["model"]
        self.succeeded = Counter("switchyard_worker_jobs_succeeded_total", "Jobs whose answer was written.", m,
                                 registry=r).labels(model)
        self.failed = Counter("switchyard_worker_jobs_failed_total", "Job runs that failed, by kind: timeout, "
                              "rejected (can never succeed as submitted: not retried), engine_error, "
                              "storage_refused (the database refused the output).", ["model", "reason"],
                              registry=r)
        self.skipped = Counter("switchyard_worker_jobs_skipped_total", "Jobs of a message no longer this "
                               "worker's to run (cancelled, re-planned, or already done).", m, registry=r).labels(model)
        self.batches = Counter("switchyard_worker_batches_total", "Micro-batch messages run.", m,
                               registry=r).labels(model)
        self.input_tokens = Counter("switchyard_worker_input_tokens_total", "Prompt tokens of succeeded jobs.", m,
                                    registry=r).labels(model)
        self.output_tokens = Counter("switchyard_worker_output_tokens_total", "Tokens generated for succeeded "
                                     "jobs.", m, registry=r).labels(model)
        self.generation = Counter("switchyard_worker_generation_seconds_total", "Seconds spent generating "
                                  "succeeded jobs (output tokens / this = tokens per second).", m,
                                  registry=r).labels(model)
        self.cost = Counter("switchyard_worker_cost_usd_total", "What succeeded jobs cost.", m,
                            registry=r).labels(model)
        self.latency = Histogram("switchyard_worker_job_latency_seconds", "Seconds per succeeded job on the "
                                 "model.", m, buckets=JOB_BUCKETS_S, registry=r).labels(model)
        self.heartbeat_failures = Counter("switchyard_worker_heartbeat_failures_total", "Heartbeats (and lease "
                                          "renewals) that could not be written.", m, registry=r).labels(model)
        self.last_heartbeat = Gauge("switchyard_worker_last_heartbeat_timestamp_seconds", "Unix time of the "
                                    "last heartbeat written.", m, registry=r).labels(model)
        for kind in failure_kinds:
            self.failed.labels(model, kind)
        if tokens_per_s is not None:
            Gauge("switchyard_worker_tokens_per_second", "Generation speed this process measured (exponentially "
                  "weighted, as its heartbeat reports it; 0 before any job).", m,
                  registry=r).labels(model).set_function(lambda: tokens_per_s() or 0.0)
        if running_jobs is not None:
            Gauge("switchyard_worker_running_jobs", "Jobs this process holds now (claimed or generating).", m,
                  registry=r).labels(model).set_function(lambda: float(running_jobs()))

    def observe_batch(self, *, latencies_s: Sequence[float], failures: Mapping[str, int], skipped: int,
                      input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        self.batches.inc()
        self.succeeded.inc(len(latencies_s))
        for seconds in latencies_s:
            self.latency.observe(seconds)
        self.generation.inc(sum(latencies_s))
        for kind, count in failures.items():
            self.failed.labels(self.model, kind).inc(count)
        self.skipped.inc(skipped)
        self.input_tokens.inc(input_tokens)
        self.output_tokens.inc(output_tokens)
        self.cost.inc(cost_usd)

    def observe_heartbeat(self, ok: bool) -> None:
        if ok:
            self.last_heartbeat.set(time.time())
        else:
            self.heartbeat_failures.inc()
