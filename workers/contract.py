"""The message contract between the tick (publisher) and the workers (consumers).

One Celery task per (model, micro-batch), published to the queue ``model.<name>`` only after the
plan that created it is committed. The message carries ids only: Postgres holds the jobs.
"""
from __future__ import annotations

TASK_NAME = "switchyard.run_batch"


def queue_name(model: str) -> str:
    """The Celery queue a model's workers consume."""
    return f"model.{model}"


def task_kwargs(dispatch_id: str, model: str, job_ids: list[str]) -> dict[str, object]:
    return {"dispatch_id": dispatch_id, "model": model, "job_ids": job_ids}
