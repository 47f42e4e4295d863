"""The per-tenant request rate limit: a token bucket holding a minute's requests."""
from __future__ import annotations

import pytest

from scheduler.api.limits import RequestRateLimiter


def test_a_minute_of_requests_then_one_per_refill() -> None:
    limiter = RequestRateLimiter()
    assert [limiter.take("a", 3, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 3, now=0.0) == pytest.approx(20.0)   # 60 s / 3 for the next token
    assert limiter.take("a", 3, now=10.0) == pytest.approx(10.0)  # half a token so far
    assert limiter.take("a", 3, now=20.0) == 0.0
    assert limiter.take("b", 3, now=20.0) == 0.0                  # every tenant has its own bucket


def test_an_idle_bucket_fills_only_to_its_limit_and_a_lowered_limit_applies_at_once() -> None:
    limiter = RequestRateLimiter()
    limiter.take("a", 2, now=0.0)
    granted = [limiter.take("a", 2, now=3600.0) for _ in range(3)]
    assert granted[:2] == [0.0, 0.0] and granted[2] > 0           # an hour idle still allows only 2
    limiter = RequestRateLimiter()
    limiter.take("a", 100, now=0.0)                     # 99 tokens left...
    assert limiter.take("a", 1, now=0.0) == 0.0         # ...capped to the new limit's 1
    assert limiter.take("a", 1, now=0.0) > 0
