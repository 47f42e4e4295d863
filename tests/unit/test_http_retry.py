"""Retry timing for HTTP model endpoints: Retry-After parsing and the backoff schedule."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from workers.backends.http_retry import RetryPolicy, backoff_s, is_retryable_status, retry_after_s

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after": "Thu, 01 Jan 2026 12:00:20 GMT"}, 20.0),
    ({"retry-after": "Thu, 01 Jan 2026 11:59:00 GMT"}, 0.0),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after_reads_seconds_dates_and_milliseconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, NOW) == expected


def test_429_408_409_and_5xx_are_retryable_other_4xx_are_not() -> None:
    assert [s for s in (400, 401, 404, 408, 409, 422, 429, 500, 503) if is_retryable_status(s)] == [408, 409, 429, 500, 503]


def test_backoff_doubles_within_jitter_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=5.0)
    rng = random.Random(0)
    for retry, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (8, 5.0)]:
        waits = [backoff_s(retry, None, policy, rng) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
        assert max(waits) - min(waits) > ceiling / 4, "jittered, not fixed"


def test_the_servers_wait_wins_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.01, backoff_max_s=5.0)
    rng = random.Random(0)
    assert 2.0 <= backoff_s(0, 2.0, policy, rng) <= 2.2
    assert backoff_s(0, 60.0, policy, rng) == 5.0
