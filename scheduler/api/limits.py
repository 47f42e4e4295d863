"""Request limits: oversized bodies (413, before they are read into memory) and each tenant's
request rate (a token bucket per tenant, 429)."""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.api.errors import error_body


class BodySizeLimit:
    """ASGI middleware: checks Content-Length, and counts bytes for chunked bodies too.

    Every body is held to ``max_body_bytes``, except at the paths of ``larger_limits`` (file
    uploads), which get their own."""

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 larger_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.larger_limits = dict(larger_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger_limits.get(scope["path"], self.max_body_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        received = 0
        too_large = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the body is too large, whatever the app answers (FastAPI turns a failed body read
            # into a 400) is replaced by the 413 below.
            if not too_large:
                await send(message)

        with contextlib.suppress(_BodyTooLarge):  # raised by counting_receive; answered below
            await self.app(scope, counting_receive, guarded_send)
        if too_large:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        advice = ("split the jobs into several requests" if limit == self.max_body_bytes
                  else "split the requests into several files")
        body = json.dumps(error_body(413, f"request body is larger than {limit} bytes; {advice}")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    """Stops the app from reading a body past the limit."""


@dataclass
class _Bucket:
    tokens: float
    refilled_at: float   # time.monotonic()


class RequestRateLimiter:
    """One token bucket per tenant, kept in this API process: it holds up to a minute's requests
    (``requests_per_minute``, so a client may burst that many) and refills at
    ``requests_per_minute / 60`` per second. With several API processes each keeps its own
    buckets, so a tenant may reach up to that many times its limit in all."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()   # the API serves sync routes from a thread pool

    def take(self, tenant: str, requests_per_minute: int, now: float) -> float:
        """Take one request's token: 0.0 when granted, else the seconds until one is available."""
        capacity = float(requests_per_minute)
        per_second = capacity / 60.0
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(capacity, now)
            # min(): a lowered limit takes effect at once.
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.refilled_at) * per_second)
            bucket.refilled_at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / per_second if per_second > 0 else 60.0
