"""A small client for the REST API, used by the CLI and the embedded demo."""
from __future__ import annotations

from typing import Any

import httpx

from scheduler.errors import (
    Conflict, Forbidden, InvalidRequest, LimitExceeded, NotFound, SpendCapReached, StorageUnavailable,
    SwitchyardError, Unauthenticated,
)

_ERROR_OF_STATUS: dict[int, type[SwitchyardError]] = {
    400: InvalidRequest, 401: Unauthenticated, 402: SpendCapReached, 403: Forbidden, 404: NotFound,
    409: Conflict, 413: InvalidRequest, 422: InvalidRequest, 429: LimitExceeded, 503: StorageUnavailable,
}


class ApiUnreachable(SwitchyardError):
    """The Switchyard API cannot be reached; start it with `switchyard api` or check SWITCHYARD_API_URL."""


class SwitchyardClient:
    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 30.0, *,
                 tenant: str | None = None) -> None:
        """``api_key``: sent as ``Authorization: Bearer``; None sends no key (every /v1 call is
        then a 401). ``tenant``: an admin key acts for this tenant (X-Switchyard-Tenant)."""
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if tenant is not None:
            headers["X-Switchyard-Tenant"] = tenant
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SwitchyardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=job)

    def submit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A batch of inline jobs; returns the batch (OpenAI's shape) with its ``job_ids``."""
        return self._call("POST", "/v1/batches", json=batch)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/batches/{batch_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        """Every job matching the filters, following the pagination cursor."""
        params = {k: v for k, v in filters.items() if v is not None} | {"limit": 1000}
        found: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", "/v1/jobs", params=params)
            found.extend(page["jobs"])
            if not page["next_cursor"]:
                return found
            params["cursor"] = page["next_cursor"]

    def models(self) -> list[dict[str, Any]]:
        """The fleet's models and ``auto`` (OpenAI's model objects with Switchyard's fields)."""
        return list(self._call("GET", "/v1/models")["data"])

    def workers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/workers")

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"cannot reach the API at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = error_message(response.json()) or response.text
            except ValueError:
                message = response.text
            raise _ERROR_OF_STATUS.get(response.status_code, SwitchyardError)(
                f"{response.status_code}: {message}")
        return response.json()


def error_message(body: Any) -> str | None:
    """What an API error says to do (``error.message`` of the one error shape), or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "") or None
    return str(error) if error else None
