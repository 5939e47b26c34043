"""Requests and tokens per minute for one API endpoint, shared by every actor that calls it.

An endpoint's quota (``rpm``/``tpm``) belongs to the provider account, not to one actor. A pool
that autoscales between ``(min, max)`` actors used to split it statically as ``1/max`` per actor,
so a ``[2, 8]`` pool used a quarter of its quota until Ray Data had scaled it to 8. Here one small
Ray actor per endpoint (:class:`EndpointLimiter`, created by the driver, placed on the driver's
node, which is never a spot worker) holds the buckets; each request *reserves* its share and
sleeps the delay it is given, so every actor of every pool on every node draws from one pace.

litellm's Router can share usage across processes only through Redis, which a Ray cluster does not
have; it also rejects over-limit requests rather than pacing them (see ``persodpo.llm_api``).

Pacing is a token bucket that may go into debt (as Go's ``rate.Limiter.Reserve``): a reservation
always succeeds and returns how long to wait, so requests leave evenly spaced in arrival order and
a request larger than the bucket only delays the ones after it. One bucket holds one second's
worth, the largest burst a limit allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class TokenBucket:
    """``per_min`` units per minute; :meth:`reserve` takes ``amount`` now and returns the wait."""

    def __init__(self, per_min: float, full: bool = True):
        self.rate = float(per_min) / 60.0
        self.cap = max(1.0, self.rate)
        self.level = self.cap if full else 0.0
        self.last = time.monotonic()

    def reserve(self, amount: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.level = min(self.cap, self.level + (now - self.last) * self.rate)
        self.last = now
        self.level -= float(amount)
        return max(0.0, -self.level / self.rate)


class Pace:
    """Both limits of an endpoint; :meth:`reserve` returns the seconds to wait before sending."""

    def __init__(self, rpm: float | None, tpm: float | None, full: bool = True):
        self.req = TokenBucket(rpm, full) if rpm else None
        self.tok = TokenBucket(tpm, full) if tpm else None
        self.reservations = 0

    def reserve(self, tokens: int = 0) -> float:
        now = time.monotonic()
        self.reservations += 1
        wait = self.req.reserve(1.0, now) if self.req else 0.0
        if self.tok:
            wait = max(wait, self.tok.reserve(float(tokens), now))
        return wait

    def state(self) -> dict:
        return {"reservations": self.reservations}


class RateLimiter:
    """The pace of one endpoint inside this process (one client, no Ray)."""

    def __init__(self, rpm: float | None, tpm: float | None, full: bool = True):
        self.pace = Pace(rpm, tpm, full) if (rpm or tpm) else None

    async def acquire(self, tokens: int = 0) -> None:
        if self.pace is not None:
            wait = self.pace.reserve(tokens)
            if wait > 0:
                await asyncio.sleep(wait)


class SharedRateLimiter:
    """The pace of one endpoint kept by an :class:`EndpointLimiter` actor, from inside any actor.

    If that actor cannot be reached (its node lost, the driver gone) the client falls back to
    ``fallback_share`` of the limits locally, says so once, and keeps going: a slower run beats a
    failed one, and the fallback never exceeds the quota. It starts with an empty bucket: the
    shared pace was spending the quota up to that moment, so a burst then would be refused."""

    def __init__(self, handle: Any, rpm: float | None, tpm: float | None, fallback_share: float):
        self.handle = handle
        self.limits = (rpm * fallback_share if rpm else None, tpm * fallback_share if tpm else None)
        self.fallback: RateLimiter | None = None
        self.broken = False

    async def acquire(self, tokens: int = 0) -> None:
        if not self.broken:
            try:
                wait = await self.handle.reserve.remote(tokens)
            except Exception as exc:  # noqa: BLE001 - any Ray failure: pace locally instead
                self.broken = True
                log.warning("shared rate limiter unreachable (%s: %s); pacing this actor at its own share",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            else:
                if wait > 0:
                    await asyncio.sleep(wait)
                return
        if self.fallback is None:
            self.fallback = RateLimiter(*self.limits, full=False)
        await self.fallback.acquire(tokens)


def limiter_name(ep) -> str:
    """One limiter per quota: the same model at the same base URL with the same key variable and
    limits shares one (two generators, or a generator and a judge, on one account)."""
    ident = "\x1f".join(str(x) for x in (ep.model, ep.api_base, ep.api_key_env, ep.rpm, ep.tpm))
    return "persodpo-ratelimit-" + hashlib.sha256(ident.encode()).hexdigest()[:16]


def endpoint_limiter(ep):
    """The shared limiter actor of ``ep`` (created once per Ray cluster namespace and driver), or
    None when the endpoint has no limits. Call on the driver; hand the result to the actors."""
    if not (ep.rpm or ep.tpm):
        return None
    import ray

    from persodpo.raycluster import on_driver_node

    return ray.remote(num_cpus=0, max_concurrency=1)(Pace).options(
        name=limiter_name(ep), get_if_exists=True, scheduling_strategy=on_driver_node(),
    ).remote(ep.rpm, ep.tpm)


def client_limiter(ep, shared: Any = None):
    """What a client paces with: the shared actor when given, else the whole limits locally."""
    if shared is not None:
        return SharedRateLimiter(shared, ep.rpm, ep.tpm, fallback_share=1.0 / ep.max_actors())
    return RateLimiter(ep.rpm, ep.tpm)
