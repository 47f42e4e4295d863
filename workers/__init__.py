"""Switchyard data plane: the Celery app, model backends and the batch task."""
