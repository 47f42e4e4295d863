"""ASGI middleware: every HTTP request counted and timed by its route template and status.

The route is the template the request matched (``/v1/jobs/{job_id}``), never the raw path, so
the number of series stays the number of routes whatever ids clients send. A request turned away
before routing (a declared body over the size limit) is matched against the API's documented
paths instead; one that matches nothing is ``unmatched``.
"""
from __future__ import annotations

import re
import time
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.metrics import UNMATCHED_ROUTE, ApiMetrics


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500   # an exception that escapes the app becomes a 500 outside this middleware

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe(scope["method"], self.route_template(scope), status, time.perf_counter() - started)

    def route_template(self, scope: Scope) -> str:
        """The path template of the route that handled (or would handle) the request."""
        route = scope.get("route")   # FastAPI records the matched route in the scope
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        if self._templates is None:
            self._templates = _documented_paths(scope.get("app"))
        for pattern, template in self._templates:
            if pattern.match(scope["path"]):
                return template
        return UNMATCHED_ROUTE


def _documented_paths(app: Any) -> list[tuple[re.Pattern[str], str]]:
    """The OpenAPI document's path templates, compiled (FastAPI caches the document)."""
    try:
        paths = list(app.openapi().get("paths", {}))
    except Exception:  # noqa: BLE001 - no document (not a FastAPI app): nothing to match
        return []
    return [(compile_path(path)[0], path) for path in paths]
