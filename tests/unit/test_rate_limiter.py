"""Request pacing: the limiter spreads requests, never exceeding the configured rate."""

import asyncio
import time

from persodpo.llm_api import ApiEndpoint, RateLimiter


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
    import pytest

    with pytest.raises(ValueError, match="secrets are never configuration"):
        ApiEndpoint(model="openai/x", params={"api_key": "sk-123"})
