"""A per-job time limit for engines that return to Python between tokens (llama.cpp does).

SIGALRM raises JobTimeout inside the generation loop of the worker's main thread; the backend's
generate_batch returns it as that job's error, so the rest of the micro-batch is unaffected. A
hang inside native code that never returns to Python is caught by the Celery task's hard time
limit instead (the process is replaced and the job's lease runs out).
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from scheduler.errors import BackendError


class JobTimeout(BackendError):
    """The job ran past its model's job_timeout_s."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; the task's hard limit still applies
        return

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise JobTimeout(f"{what} ran past its timeout of {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
