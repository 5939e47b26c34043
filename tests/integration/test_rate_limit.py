"""One rpm per endpoint, shared by every actor that calls it (persodpo.rate_limit), against a
loopback server that answers 429 beyond its quota as a provider does."""

import asyncio

from persodpo.llm_api import ApiEndpoint
from persodpo.rate_limit import endpoint_limiter
from tests.support.openai_server import OpenAIServer

RPM = 600  # 10 requests/s: slow enough to measure on a loaded 2-core machine, fast enough to be quick


class _Caller:
    """A Ray actor holding one litellm client, as an actor of a Ray Data pool does."""

    def __init__(self, endpoint: dict, limiter):
        from persodpo.llm_api import LiteLLMClient

        self.client = LiteLLMClient(ApiEndpoint.model_validate(endpoint), limiter=limiter)

    async def send(self, n: int, tag: str) -> list:
        msgs = [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]
        results = await asyncio.gather(*(self.client.complete(m) for m in msgs))
        return [r.error for r in results]


def _rate_after_burst(times: list[float], burst: int) -> float:
    """Requests/s from the end of the first second's burst to the last arrival."""
    times = sorted(times)[burst:]
    return (len(times) - 1) / (times[-1] - times[0])


def _endpoint(server, **kw) -> ApiEndpoint:
    return ApiEndpoint(model="openai/loopback", api_base=server.api_base, rpm=RPM, max_in_flight=64, max_retries=0,
                       timeout_s=30, **kw)


def test_one_actor_of_a_scaling_pool_uses_the_whole_rpm(ray_local):
    # Before: a (1, 4) pool with one actor alive paced that actor at rpm / 4 (0.25 of it; 0.7 leaves
    # room for a loaded machine).
    with OpenAIServer(rpm_limit=RPM) as server:
        ep = _endpoint(server, concurrency=(1, 4))
        caller = ray_local.remote(num_cpus=0.1)(_Caller).remote(ep.model_dump(mode="json"), endpoint_limiter(ep))
        errors = ray_local.get(caller.send.remote(50, "one"), timeout=120)
        assert errors == [None] * 50
        rate = _rate_after_burst(server.times, burst=10)
        assert server.stats["over_quota"] == 0
    assert 0.7 * RPM / 60 <= rate <= 1.1 * RPM / 60, rate


def test_actors_together_never_exceed_the_endpoints_rpm(ray_local):
    with OpenAIServer(rpm_limit=RPM) as server:
        ep = _endpoint(server, concurrency=3)
        limiter = endpoint_limiter(ep)
        callers = [ray_local.remote(num_cpus=0.1)(_Caller).remote(ep.model_dump(mode="json"), limiter)
                   for _ in range(3)]
        ray_local.get([c.send.remote(1, "warm-up") for c in callers], timeout=120)
        start = len(server.times)
        errors = ray_local.get([c.send.remote(30, f"c{i}") for i, c in enumerate(callers)], timeout=120)
        assert [e for errs in errors for e in errs if e] == []
        rate = _rate_after_burst(server.times[start:], burst=10)
        assert server.stats["over_quota"] == 0, "the actors together went past the endpoint's quota"
        assert 0.7 * RPM / 60 <= rate <= 1.1 * RPM / 60, rate
        assert ray_local.get(limiter.state.remote())["reservations"] == 3 + 90

        # The limiter's node lost: each actor paces itself at 1/3 of the rpm and loses no request.
        ray_local.kill(limiter)
        mark = len(server.times)
        errors = ray_local.get([c.send.remote(5, f"after{i}") for i, c in enumerate(callers)], timeout=120)
        after = sorted(server.times[mark:])
        assert [e for errs in errors for e in errs if e] == [], [round(t - after[0], 3) for t in after]
        assert server.stats["over_quota"] == 0


def test_an_endpoint_without_limits_gets_no_limiter():
    assert endpoint_limiter(ApiEndpoint(model="openai/x")) is None
