"""Map every failure the API can produce to one error shape, OpenAI's:

    {"error": {"message": "what to fix", "type": "invalid_request_error", "param": "jobs[3].prompt",
               "code": null}, "detail": [...]}

Switchyard errors, request validation, Starlette's own HTTP errors (unknown route, wrong method,
a body that cannot be read) and any unexpected exception all answer through ``error_response``,
so a caller parses one shape and reads ``error.message`` for what to fix. It is OpenAI's shape so
that the official clients (which read ``error.message`` into their exceptions) show it too;
``detail`` lists every invalid field of a request that failed validation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from scheduler.errors import (
    Conflict, Forbidden, InvalidRequest, LimitExceeded, NotFound, RateLimited, SpendCapReached, StorageUnavailable,
    SwitchyardError, Unauthenticated, UnknownModel,
)
from scheduler.jobspec import INNER_LOC, escape_unprintable

# The first matching class decides (subclasses before their bases).
STATUS_OF: list[tuple[type[SwitchyardError], int]] = [
    (UnknownModel, 422), (InvalidRequest, 422), (NotFound, 404), (Conflict, 409), (StorageUnavailable, 503),
    (Unauthenticated, 401), (Forbidden, 403), (SpendCapReached, 402), (LimitExceeded, 429),
]
MALFORMED_JSON = "malformed JSON body"
SUMMARISED_ERRORS = 5
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


# OpenAI's error types by status (its clients branch on the status; the type is for people).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               403: "permission_error", 404: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error"}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None,
               detail: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The one error shape (module doc). The message is escaped: it may quote text the caller
    sent, and a lone surrogate there would make the response itself unencodable."""
    error = {"message": escape_unprintable(message),
             "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
             "param": param, "code": code}
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(status: int, message: str, detail: list[dict[str, Any]] | None = None,
                   headers: Mapping[str, str] | None = None, *, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code, detail=detail), status_code=status,
                        headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SwitchyardError)
    async def _switchyard_error(_: Request, exc: SwitchyardError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)
        return error_response(status, str(exc), headers=_error_headers(exc, status))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_clean(e) for e in exc.errors()]
        malformed = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if malformed is not None:
            reason = (malformed.get("ctx") or {}).get("error", "it is not JSON")
            position = malformed.get("loc", ("body", "?"))[-1]
            return error_response(400, f"{MALFORMED_JSON}: {reason} at character {position}", errors)
        summary = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:SUMMARISED_ERRORS])
        return error_response(422, f"invalid request: {summary}", errors,
                              param=_field_path(errors[0]["loc"]) if errors else None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow lists the first route's methods only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, _http_error_message(request, exc), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        # A bug, never the caller's fault. Starlette re-raises the exception after this answer,
        # so the server logs its traceback; the caller gets no internals.
        return error_response(500, f"internal error ({type(exc).__name__}); this is a Switchyard bug, "
                                   "please report it")


def _error_headers(exc: SwitchyardError, status: int) -> dict[str, str] | None:
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if status == 503:
        return {"Retry-After": "5"}
    return None


def _http_error_message(request: Request, exc: HTTPException) -> str:
    """Starlette's and FastAPI's own HTTP errors carry a bare reason ("Not Found"); say what to do."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return f"no such endpoint: {where}; the API is under /v1 (see /docs)"
    if exc.status_code == 405:
        return f"{where} is not allowed; this endpoint accepts {', '.join(_allowed_methods(request))}"
    if exc.status_code == 400:  # FastAPI could not parse the body at all (not UTF-8, nested too deep)
        return f"{MALFORMED_JSON}: it could not be parsed; send UTF-8 JSON"
    return str(exc.detail)


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at this path, found by asking the router itself (FastAPI
    nests included routers; one path may have one route per method)."""
    return [method for method in PROBED_METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in request.app.router.routes)]


def _clean(error: Any) -> dict[str, Any]:
    """A pydantic error as plain JSON: no ctx (it may hold exception objects) and no input (it
    may hold the very text that cannot be encoded), a loc that reaches inside the field when the
    validator said where, and every string escaped."""
    loc = [*error.get("loc", ()), *(error.get("ctx") or {}).get(INNER_LOC, ())]
    return {"type": error.get("type"),
            "loc": [part if isinstance(part, int) else escape_unprintable(str(part)) for part in loc],
            "msg": escape_unprintable(str(error.get("msg", ""))).removeprefix("Value error, ")}


def _field_path(loc: Sequence[str | int]) -> str:
    """``["body", "jobs", 3, "metadata", "k"]`` -> ``jobs[3].metadata.k``; ``["query", "cursor"]``
    -> ``query.cursor``; an error about the whole body stays ``body``."""
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] == "body" else list(loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path
