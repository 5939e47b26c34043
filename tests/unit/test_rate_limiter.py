"""Request pacing: the limiter spreads requests, never exceeding the configured rate."""

import asyncio
import time

import pytest

from persodpo.llm_api import ApiEndpoint
from persodpo.rate_limit import Pace, RateLimiter, TokenBucket, limiter_name


def test_requests_per_minute_are_paced():
    lim = RateLimiter(rpm=1200, tpm=None)  # 20/s, burst of one second's worth

    async def run():
        t0 = time.monotonic()
        for _ in range(40):
            await lim.acquire()
        return time.monotonic() - t0

    # 40 requests at 20/s with a 20-request burst: at least (40 - 20) / 20 = 1 s.
    assert asyncio.run(run()) >= 0.95


def test_tokens_per_minute_are_paced():
    lim = RateLimiter(rpm=None, tpm=6000)  # 100 tokens/s

    async def run():
        t0 = time.monotonic()
        for _ in range(4):
            await lim.acquire(tokens=100)
        return time.monotonic() - t0

    assert asyncio.run(run()) >= 0.29


def test_no_limits_means_no_wait():
    lim = RateLimiter(None, None)
    t0 = time.monotonic()
    asyncio.run(lim.acquire(10_000))
    assert time.monotonic() - t0 < 0.5


def test_endpoint_refuses_secrets_in_params():
    with pytest.raises(ValueError, match="secrets are never configuration"):
        ApiEndpoint(model="openai/x", params={"api_key": "sk-123"})


def test_a_reservation_in_debt_delays_the_ones_after_it_in_arrival_order():
    b = TokenBucket(per_min=60)  # 1/s, a bucket of 1
    t = b.last
    assert b.reserve(1, now=t) == 0.0          # the burst
    assert b.reserve(1, now=t) == 1.0          # next slot in 1 s
    assert b.reserve(1, now=t) == 2.0          # and the one after
    # t + 2.0 - t is not exactly 2.0 for every clock value, hence approx
    assert b.reserve(1, now=t + 2.0) == pytest.approx(1.0)  # 2 s later the debt is one request


def test_pace_waits_for_the_slower_of_its_two_limits():
    p = Pace(rpm=6000, tpm=600)  # 100 req/s, 10 tokens/s
    assert p.reserve(tokens=10) == 0.0
    assert p.reserve(tokens=10) >= 0.99   # tokens bind, not requests
    assert p.state()["reservations"] == 2


def test_one_limiter_per_quota():
    a = ApiEndpoint(model="openai/x", api_base="http://h/v1", rpm=60, concurrency=(2, 8))
    same = a.model_copy(update={"concurrency": 1, "max_in_flight": 4})
    other_limit = a.model_copy(update={"rpm": 120})
    other_model = a.model_copy(update={"model": "openai/y"})
    assert limiter_name(a) == limiter_name(same)
    assert len({limiter_name(a), limiter_name(other_limit), limiter_name(other_model)}) == 3
