"""When to retry an HTTP call to a model endpoint, and how long to wait first.

Rate limits (429), server errors (5xx) and lost connections are worth retrying; the wait grows
exponentially with "equal jitter" (half fixed, half random), so that the threads of a micro-batch
that failed together do not come back together. A server's ``Retry-After`` (or OpenAI's
``retry-after-ms``) wins over our own schedule, up to the cap.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

# 408 and 409 are "try again" by definition (OpenAI's own clients retry them too).
RETRYABLE_STATUS = frozenset({408, 409, 429})


class RetryPolicy(BaseModel):
    """How often and how patiently to retry one request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=4, ge=0, le=20, description="Retries after the first attempt.")
    backoff_base_s: float = Field(default=0.5, gt=0, le=60, description="Wait before the first retry.")
    backoff_max_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest single wait, Retry-After included."
    )


def is_retryable_status(status_code: int) -> bool:
    return status_code in RETRYABLE_STATUS or status_code >= 500


def retry_after_s(headers: Mapping[str, str], now: dt.datetime) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``
    (seconds or an HTTP date); None when it did not say or said something unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        with contextlib.suppress(ValueError):  # malformed: fall through to Retry-After
            return max(0.0, float(millis) / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):  # not seconds: maybe an HTTP date
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_s(retry: int, server_wait_s: float | None, policy: RetryPolicy, rng: random.Random) -> float:
    """The wait before retry number ``retry`` (0 for the first retry)."""
    if server_wait_s is not None:
        # Up to 10% on top: many threads told "1 s" should not all return at exactly 1 s.
        return min(policy.backoff_max_s, server_wait_s * (1.0 + 0.1 * rng.random()))
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** retry)
    return ceiling * (0.5 + 0.5 * rng.random())
