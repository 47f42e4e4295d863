"""Publish a committed plan's dispatches as Celery tasks: one per (model, micro-batch), on
``model.<name>``, the one place the scheduler talks to the broker's publishing side.

Publishing happens after the plan is committed. If it fails, the jobs stay ``queued`` with a
lease; the broker audit (scheduler/lost_messages.py) or, at the latest, the queue lease plans them
again, so nothing is lost.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from celery import Celery

from scheduler.plan import Dispatch
from scheduler.queues import TASK_NAME, queue_name, task_kwargs
from scheduler.tick import PublishReport

log = logging.getLogger(__name__)


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, dispatches: Sequence[Dispatch]) -> PublishReport:
        report = PublishReport()
        if not dispatches:
            return report
        with self.app.producer_pool.acquire(block=True) as producer:
            for dispatch in dispatches:
                try:
                    self.app.send_task(
                        TASK_NAME, kwargs=task_kwargs(dispatch.dispatch_id, dispatch.model, list(dispatch.job_ids)),
                        queue=queue_name(dispatch.model), producer=producer,
                        # The message names its dispatch, so scheduler.broker_audit can tell which
                        # queued dispatches lost their message (a Redis restart).
                        task_id=dispatch.dispatch_id,
                        # what Flower shows; set here, Celery skips repr-ing 32 job ids per task
                        argsrepr="()", kwargsrepr=f"{{dispatch_id: {dispatch.dispatch_id}, model: {dispatch.model}, "
                                                  f"job_ids: {len(dispatch.job_ids)} jobs}}",
                        retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
                    report.published += 1
                except Exception as exc:  # noqa: BLE001 - the lease recovers these jobs
                    log.warning("publishing %s to %s failed: %s", dispatch.dispatch_id, dispatch.model, exc)
                    report.failed.append((dispatch, f"{type(exc).__name__}: {exc}"))
        return report
