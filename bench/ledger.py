"""How many paid requests per second one budget ledger (persodpo.budget) and one endpoint limiter
(persodpo.rate_limit) can serve (issue 15: "one max_concurrency=1 actor taking two calls per
request"). Run by hand, not in CI:

    PYTHONPATH=$PWD .venv/bin/python bench/ledger.py [--callers 4] [--in-flight 64] [--seconds 20]

``--callers`` async Ray actors (like the API actors) each keep ``--in-flight`` requests going; a
request is what ApiBatchCaller does around a paid call without the call itself: reserve on the
ledger (one actor call), acquire from the endpoint's limiter (one call), settle (one call). Printed:
requests/s through them, the actor-call latency a request pays (median, p99), and the ledger's own
counts (every request granted and settled: nothing lost under load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--num-cpus", type=int, default=8)
    a = ap.parse_args()

    import ray

    from persodpo.budget import ledger_actor, reserve_all
    from persodpo.llm_api import ApiEndpoint
    from persodpo.rate_limit import endpoint_limiter

    ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    ledger = ledger_actor(1e9)
    # an rpm far above what the actors reach: the limiter's calls are made, its waits are ~0
    limiter = endpoint_limiter(ApiEndpoint(model="openai/bench", rpm=10_000_000))

    @ray.remote(num_cpus=0)
    class Caller:
        async def run(self, in_flight: int, seconds: float, ledgers, limiter) -> list[float]:
            stop = time.monotonic() + seconds
            lat: list[float] = []

            async def loop():
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    assert await reserve_all(ledgers, 1e-4)
                    await limiter.reserve.remote(100)
                    for led in ledgers:
                        await led.settle.remote(1e-4, 5e-5)
                    lat.append(time.perf_counter() - t)

            await asyncio.gather(*(loop() for _ in range(in_flight)))
            return lat

    callers = [Caller.options(max_concurrency=a.in_flight + 1).remote() for _ in range(a.callers)]
    t0 = time.time()
    lats = sorted(x for part in ray.get([c.run.remote(a.in_flight, a.seconds, [ledger], limiter) for c in callers])
                  for x in part)
    wall = time.time() - t0
    state = ray.get(ledger.state.remote())
    print(json.dumps({
        "callers": a.callers, "in_flight_per_caller": a.in_flight, "cpus": os.cpu_count(),
        "requests": len(lats), "requests_per_s": round(len(lats) / wall, 1),
        "actor_calls_per_s": round(3 * len(lats) / wall, 1),
        "overhead_ms_median": round(1e3 * lats[len(lats) // 2], 2),
        "overhead_ms_p99": round(1e3 * lats[int(len(lats) * 0.99)], 2),
        "ledger_granted": state["granted"], "ledger_reserved_left_usd": state["reserved_usd"],
        "ledger_spent_usd": state["spent_usd"], "expected_spent_usd": round(len(lats) * 5e-5, 8)}))


if __name__ == "__main__":
    main()
