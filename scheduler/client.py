"""A small client for the REST API, used by the CLI and the embedded demo."""
from __future__ import annotations

from typing import Any

import httpx

from scheduler.errors import (
    Conflict, InvalidRequest, NotFound, StorageUnavailable, SwitchyardError,
)

_ERROR_OF_STATUS: dict[int, type[SwitchyardError]] = {
    400: InvalidRequest, 404: NotFound, 409: Conflict, 413: InvalidRequest, 422: InvalidRequest,
    503: StorageUnavailable,
}


class ApiUnreachable(SwitchyardError):
    """The Switchyard API cannot be reached; start it with `switchyard api` or check SWITCHYARD_API_URL."""


class SwitchyardClient:
    def __init__(self, base_url: str, owner: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  headers={"X-Switchyard-Owner": owner})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SwitchyardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=job)

    def submit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
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
        return self._call("GET", "/v1/models")

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
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise _ERROR_OF_STATUS.get(response.status_code, SwitchyardError)(
                f"{response.status_code}: {message}")
        return response.json()
