"""The scheduler service: elect one leader, then tick every ``tick_interval_s``.

A standby process retries leadership every interval, so killing the leader hands over within a
tick. Nothing that can go wrong in the loop ends it: a database or broker outage, a lost lock
connection or a failed tick is logged and retried, backing off from ``tick_interval_s`` to
``outage_retry_max_s``, and leadership is given up (and re-taken under a new epoch) whenever it
may have been lost, so a stale leader never commits (scheduler/storage/leader.py).

Between ticks the leader does the upkeep that keeps each tick small: it reviews the answers of
cascade steps (accept, or escalate to the next model), scores the next window's jobs ahead of
time, re-plans jobs whose broker message was lost, and prunes old decision history.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from scheduler.batch_lifecycle import advance_batches
from scheduler.dispatch import CeleryDispatcher
from scheduler.errors import LostLeadership
from scheduler.fleet import Fleet, load_fleet
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.learning.learner import Learner
from scheduler.lost_messages import BrokerAudit, LostMessageSweep
from scheduler.metrics import MetricsServer, SchedulerMetrics, new_registry, serve_metrics
from scheduler.policy import OptimizingPolicy
from scheduler.review import JobUnderReview, Verdict, review
from scheduler.settings import Settings
from scheduler.storage import Database, FleetStore, WindowStore, utcnow
from scheduler.storage.leader import LeaderLock, LeaderTerm
from scheduler.storage.reviews import ReviewCounts, ReviewStore
from scheduler.tick import Dispatcher, Policy, TickReport, run_tick

log = logging.getLogger(__name__)

# Decision history is pruned at most this often, this many rows at a time (a bounded step
# between ticks, never a long delete inside one).
PRUNE_INTERVAL_S = 60.0
PRUNE_MAX_ROWS = 20_000
# Most jobs awaiting review (a cascade step's answer) judged per upkeep: the rest wait for the next.
REVIEW_MAX_JOBS = 256


def default_policy(fleet: Fleet, settings: Settings) -> OptimizingPolicy:
    """The fleet file's priors as predictions (before anything is learned); the optimizer still
    enforces capacity, floors, caps and deadlines."""
    return OptimizingPolicy(fleet, FleetPredictor(fleet, None, None), horizon_s=settings.plan_horizon_s)


class Scheduler:
    """Everything a tick needs, built once from settings."""

    def __init__(self, settings: Settings, db: Database, fleet: Fleet, policy: Policy,
                 dispatcher: Dispatcher | None, learner: Learner | None = None,
                 broker_audit: BrokerAudit | None = None, metrics: SchedulerMetrics | None = None) -> None:
        self.settings = settings
        self.db = db
        self.fleet = fleet
        self.policy = policy
        self.dispatcher = dispatcher
        self.learner = learner
        self.metrics = metrics
        self.window_store = WindowStore(db)
        self.reviews = ReviewStore(db)
        self.lost_messages = LostMessageSweep(self.window_store, broker_audit, settings.broker_audit_interval_s)
        self._exploration_rng = np.random.default_rng()   # which jobs explore: fresh draws every tick
        self._last_window_jobs = settings.window_min_jobs
        self._pruned_at = -np.inf

    @classmethod
    def from_settings(cls, settings: Settings) -> Scheduler:
        from scheduler.broker_audit import find_lost_dispatches
        from scheduler.queues import make_celery
        from scheduler.storage.monitoring import MonitoringStore

        fleet = load_fleet(settings.fleet_file)
        db = Database(settings.database_url)
        app = make_celery(settings)
        metrics = SchedulerMetrics(new_registry(), fleet.names, MonitoringStore(db),
                                   quality_window_s=settings.metrics_quality_window_s,
                                   max_spend_series=settings.metrics_max_spend_series)
        return cls(settings, db, fleet, default_policy(fleet, settings), CeleryDispatcher(app),
                   Learner(settings, db, fleet), broker_audit=functools.partial(find_lost_dispatches, app),
                   metrics=metrics)

    def tick(self, *, dry_run: bool = False, term: LeaderTerm | None = None) -> TickReport:
        if self.learner is not None:
            # The newest fitted predictor and cascade model, and what the outcomes so far say,
            # plan this window.
            predictor, feedback = self.learner.predictor(), self.learner.feedback()
            self.policy = OptimizingPolicy(
                self.fleet, predictor, horizon_s=self.settings.plan_horizon_s,
                exploration=self.learner.exploration(), feedback=feedback, rng=self._exploration_rng,
                cascade=self.learner.cascade_model())
            if self.metrics is not None:
                self.metrics.observe_learning(predictor.version, dict(zip(self.fleet.names, feedback.label_counts)),
                                              feedback.promise_gap)
        report = run_tick(self.window_store, self.policy, self.fleet, self.dispatcher, self.settings, utcnow(),
                          dry_run=dry_run, term=term)
        if self.metrics is not None and not dry_run:
            self.metrics.observe_tick(report)
        self._last_window_jobs = max(report.window_jobs, self.settings.window_min_jobs)
        if self.learner is not None and not dry_run:
            self.learner.refit_in_background_if_due(utcnow())
        return report

    def prescore(self) -> int:
        """Score the jobs the next window will hold that the current predictor has not seen yet,
        between ticks, so the next tick finds them in its cache: featurising prompt text is the
        dearest part of a tick's predict, and jobs arriving over an interval can be scored while
        the scheduler waits. Returns how many were scored."""
        if self.learner is None:
            return 0
        predictor = self.learner.predictor()
        upcoming = self.window_store.next_window_ids(self._last_window_jobs, utcnow())
        unscored = predictor.unscored(upcoming)
        if unscored:
            texts = self.window_store.prompt_texts(unscored)
            present = [job_id for job_id in unscored if job_id in texts]   # a job may have left pending
            predictor.predict([texts[job_id] for job_id in present], keys=present)
        return len(unscored)

    def upkeep(self, term: LeaderTerm) -> None:
        """The leader's work between ticks. Each step only saves later work, so a failure is
        logged and never costs the leadership this process holds."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("reviewing the answers of cascade steps", lambda: self.review_answers(term)),
            ("scoring the next window's jobs", self.prescore),
            ("checking queued jobs' messages on the broker", lambda: self._replan_lost_messages(term)),
            ("pruning old decision history", self._prune_if_due),
            ("moving batches on (expiry, cancels, output files)", lambda: advance_batches(self.db, utcnow())),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001
                log.warning("%s failed (retried later): %s", what, exc)

    def review_answers(self, term: LeaderTerm | None = None, limit: int = REVIEW_MAX_JOBS) -> ReviewCounts:
        """Judge the answers of up to ``limit`` jobs awaiting review with the learner's current
        answer judge, then accept the best answer or escalate to the cascade's next model
        (scheduler/review.py). Without a fitted judge nothing escalates."""
        judge, version = self.learner.judge() if self.learner is not None else (None, None)
        predictor = self.learner.predictor() if self.learner is not None else FleetPredictor(self.fleet, None, None)
        names = self.fleet.names

        def decide(jobs: Sequence[JobUnderReview]) -> list[Verdict]:
            # Each answering model's ex-ante p, as the tick saw it (the prediction cache has most).
            p = predictor.predict([job.prompt_text for job in jobs], keys=[job.job_id for job in jobs]).p_success
            return [review(job, judge, {name: float(p[i, k]) for k, name in enumerate(names)}, version)
                    for i, job in enumerate(jobs)]

        counts = self.reviews.review(limit, utcnow(), decide, term)
        if counts.reviewed:
            log.info("reviewed %d answer(s): %d accepted, %d escalated (judge %s)", counts.reviewed,
                     counts.accepted, counts.escalated, version or "none: nothing escalates")
        return counts

    def _replan_lost_messages(self, term: LeaderTerm) -> None:
        replanned = self.lost_messages.run_if_due(utcnow(), term)
        if self.metrics is not None:
            self.metrics.observe_lost_messages(replanned)

    def _prune_if_due(self) -> None:
        if time.monotonic() - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = time.monotonic()
        before = utcnow() - dt.timedelta(seconds=self.settings.decision_retention_s)
        pruned = self.window_store.prune_history(before, PRUNE_MAX_ROWS)
        if pruned:
            log.info("pruned %d decision/tick rows older than %s", pruned, before.isoformat(timespec="seconds"))

    def run_forever(self, stop: threading.Event, on_tick: Callable[[TickReport], None] | None = None) -> None:
        leader = LeaderLock(self.db)
        synced = False
        failures = 0
        server = self._serve_metrics()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if not synced:
                        FleetStore(self.db).sync(self.fleet, utcnow())
                        synced = True
                    term = leader.try_acquire(utcnow())
                    self._record_leadership(term)
                    if term is None:
                        log.debug("another scheduler leads; standing by")
                    else:
                        report = self.tick(term=term)
                        if on_tick is not None:
                            on_tick(report)
                        if report.plan.assignments or report.plan.deferrals or report.recovery.changed_anything:
                            log.info(report.summary())
                        self.upkeep(term)
                    if failures:
                        log.info("scheduler recovered after %d failed attempt(s)", failures)
                    failures = 0
                except LostLeadership as exc:
                    log.warning("%s; standing by until leadership is re-taken", exc)
                    leader.release()
                    self._record_leadership(None)
                except Exception as exc:  # noqa: BLE001 - the loop outlives any outage or failed tick
                    failures += 1
                    if self.metrics is not None:
                        self.metrics.tick_failures.inc()
                    if failures == 1:
                        log.exception("tick failed; retrying with backoff")
                    else:
                        log.warning("tick failed again (%d in a row): %s", failures, exc)
                    leader.release()
                    self._record_leadership(None)
                stop.wait(max(0.0, self._retry_delay(failures) - (time.monotonic() - started)))
        finally:
            leader.release()
            self._record_leadership(None)
            if server is not None:
                server.stop()

    def _serve_metrics(self) -> MetricsServer | None:
        if self.metrics is None or not self.settings.scheduler_metrics_port:
            return None
        return serve_metrics(self.metrics.registry, self.settings.metrics_host, self.settings.scheduler_metrics_port,
                             "the scheduler")

    def _record_leadership(self, term: LeaderTerm | None) -> None:
        if self.metrics is not None:
            self.metrics.set_leading(None if term is None else term.epoch)

    def _retry_delay(self, failures: int) -> float:
        """The tick interval while all is well; after failures, doubling up to outage_retry_max_s
        (never longer than that, so the scheduler ticks again within seconds of a recovery)."""
        interval = self.settings.tick_interval_s
        if failures == 0:
            return interval
        return min(max(interval, self.settings.outage_retry_max_s), interval * 2 ** (failures - 1))
