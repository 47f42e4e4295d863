"""The scheduler service: elect one leader, then tick every ``tick_interval_s``.

A standby process retries leadership every interval, so killing the leader hands over within a
tick. A failing tick (database down, broker down) is logged and retried; it never ends the loop.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from scheduler.dispatch import CeleryDispatcher
from scheduler.fleet import Fleet, load_fleet
from scheduler.learning.fleet_predictor import FleetPredictor
from scheduler.learning.learner import Learner
from scheduler.policy import OptimizingPolicy
from scheduler.settings import Settings
from scheduler.storage import Database, FleetStore, WindowStore, utcnow
from scheduler.storage.leader import LeaderLock
from scheduler.tick import Dispatcher, Policy, TickReport, run_tick

log = logging.getLogger(__name__)


def default_policy(fleet: Fleet, settings: Settings) -> OptimizingPolicy:
    """The fleet file's priors as predictions (before anything is learned); the optimizer still
    enforces capacity, floors, caps and deadlines."""
    return OptimizingPolicy(fleet, FleetPredictor(fleet, None, None), horizon_s=settings.plan_horizon_s)


class Scheduler:
    """Everything a tick needs, built once from settings."""

    def __init__(self, settings: Settings, db: Database, fleet: Fleet, policy: Policy,
                 dispatcher: Dispatcher | None, learner: Learner | None = None) -> None:
        self.settings = settings
        self.db = db
        self.fleet = fleet
        self.policy = policy
        self.dispatcher = dispatcher
        self.learner = learner
        self.window_store = WindowStore(db)
        self._exploration_rng = np.random.default_rng()   # which jobs explore: fresh draws every tick

    @classmethod
    def from_settings(cls, settings: Settings) -> Scheduler:
        from workers.celery_app import make_celery

        fleet = load_fleet(settings.fleet_file)
        db = Database(settings.database_url)
        return cls(settings, db, fleet, default_policy(fleet, settings), CeleryDispatcher(make_celery(settings)),
                   Learner(settings, db, fleet))

    def tick(self, *, dry_run: bool = False) -> TickReport:
        if self.learner is not None:
            # The newest fitted predictor, and what the outcomes so far say, plan this window.
            self.policy = OptimizingPolicy(
                self.fleet, self.learner.predictor(), horizon_s=self.settings.plan_horizon_s,
                exploration=self.learner.exploration(), feedback=self.learner.feedback(), rng=self._exploration_rng)
        report = run_tick(self.window_store, self.policy, self.fleet, self.dispatcher, self.settings, utcnow(),
                          dry_run=dry_run)
        if self.learner is not None and not dry_run:
            self.learner.refit_in_background_if_due(utcnow())
        return report

    def prescore(self) -> int:
        """Score pending jobs the current predictor has not seen yet, between ticks, so the next
        tick finds them in its cache: featurising prompt text is the dearest part of a tick's
        predict, and jobs arriving over an interval can be scored while the scheduler waits.
        Returns how many were scored."""
        if self.learner is None:
            return 0
        predictor = self.learner.predictor()
        unscored = predictor.unscored(self.window_store.pending_job_ids(self.settings.window_max_jobs))
        if unscored:
            texts = self.window_store.prompt_texts(unscored)
            present = [job_id for job_id in unscored if job_id in texts]   # a job may have left pending
            predictor.predict([texts[job_id] for job_id in present], keys=present)
        return len(unscored)

    def _prescore_quietly(self) -> None:
        """Pre-scoring only saves the next tick time: a failure is logged, never fatal to the
        leadership this process holds (the next tick scores the jobs itself)."""
        try:
            self.prescore()
        except Exception:  # noqa: BLE001
            log.exception("scoring pending jobs ahead of the tick failed; the tick will score them")

    def run_forever(self, stop: threading.Event, on_tick: Callable[[TickReport], None] | None = None) -> None:
        leader = LeaderLock(self.db)
        synced = False
        try:
            while not stop.is_set():
                next_tick_at = time.monotonic() + self.settings.tick_interval_s
                try:
                    if not synced:
                        FleetStore(self.db).sync(self.fleet, utcnow())
                        synced = True
                    if not leader.try_acquire():
                        log.info("another scheduler leads; standing by")
                    else:
                        report = self.tick()
                        if on_tick is not None:
                            on_tick(report)
                        if report.plan.assignments or report.plan.deferrals or report.recovery.requeued:
                            log.info(report.summary())
                        self._prescore_quietly()
                except Exception:  # noqa: BLE001 - the loop outlives any one tick
                    log.exception("tick failed; retrying next interval")
                    leader.release()
                stop.wait(max(0.0, next_tick_at - time.monotonic()))
        finally:
            leader.release()
