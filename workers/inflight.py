"""The jobs a worker process holds right now, so its heartbeat can renew their leases.

A claimed job waiting its turn in the micro-batch is renewed indefinitely; once it starts it is
renewed only until its timeout. A job stuck in the engine therefore stops being renewed, its
lease runs out, and the tick retries it elsewhere.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}   # run token -> monotonic time its timeout ends

    @contextmanager
    def holding(self, run_tokens: Sequence[str]) -> Iterator[None]:
        with self._lock:
            self._deadlines.update(dict.fromkeys(run_tokens, math.inf))
        try:
            yield
        finally:
            with self._lock:
                for token in run_tokens:
                    self._deadlines.pop(token, None)

    def started(self, run_tokens: Sequence[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            for token in run_tokens:
                if token in self._deadlines:
                    self._deadlines[token] = deadline

    def renewable(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [token for token, deadline in self._deadlines.items() if deadline > now]
