"""Map Switchyard errors and request-parsing failures to clear 4xx / 503 responses."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from scheduler.errors import (
    Conflict, InvalidRequest, NotFound, StorageUnavailable, SwitchyardError, UnknownModel,
)

STATUS_OF: list[tuple[type[SwitchyardError], int]] = [
    (UnknownModel, 422), (InvalidRequest, 422), (NotFound, 404), (Conflict, 409), (StorageUnavailable, 503),
]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SwitchyardError)
    async def _switchyard_error(_: Request, exc: SwitchyardError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_clean(e) for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON body", "detail": errors}, status_code=400)
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"error": f"invalid request: {summary}", "detail": errors}, status_code=422)


def _clean(error: Any) -> dict[str, Any]:
    # Pydantic's ctx may hold exception objects, which are not JSON.
    return {"type": error.get("type"), "loc": list(error.get("loc", ())), "msg": error.get("msg")}
