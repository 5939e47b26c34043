"""litellm against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

import asyncio

import pytest

from persodpo.llm_api import ApiEndpoint, LiteLLMClient, call_dataset
from tests.support.openai_server import OpenAIServer


@pytest.fixture(scope="module")
def server():
    with OpenAIServer(retry_after_s=1, slow_s=5) as s:
        yield s


def _ep(server, **kw):
    base = dict(model="openai/loopback", api_base=server.api_base, max_retries=3, timeout_s=2.0,
                input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    return ApiEndpoint(**{**base, **kw})


def _ask(client, text):
    return asyncio.run(client.complete([{"role": "user", "content": text}]))


@pytest.mark.parametrize("script", ["429,429", "500,503", "bad_json", "empty", "truncated", "timeout"])
def test_transient_faults_are_retried(server, script):
    before = server.stats["requests"]
    r = _ask(LiteLLMClient(_ep(server)), f"hello [[fault:{script}]]")
    assert r.error is None, r.error
    assert r.text.startswith('{"response"')
    assert server.stats["requests"] - before == len(script.split(",")) + 1


def test_retry_limit_is_respected_and_the_error_recorded(server):
    before = server.stats["requests"]
    r = _ask(LiteLLMClient(_ep(server, max_retries=2)), "x [[fault:500,500,500,500,500]]")
    assert r.text is None and ("500" in r.error or "InternalServer" in r.error)
    assert server.stats["requests"] - before == 3  # 1 try + 2 retries, not one more


def test_tokens_and_cost_from_litellm(server):
    r = _ask(LiteLLMClient(_ep(server)), "count my tokens please")
    assert r.prompt_tokens == 4 and r.completion_tokens >= 1
    assert r.cost_usd == pytest.approx(4 * 1e-6 + r.completion_tokens * 2e-6)


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    from persodpo.errors import ConfigError

    monkeypatch.delenv("PERSODPO_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="PERSODPO_TEST_KEY"):
        LiteLLMClient(ApiEndpoint(model="openai/gpt-4o-mini", api_key_env="PERSODPO_TEST_KEY"))


def test_ray_data_actor_pool_loses_no_row(ray_local):
    with OpenAIServer(fault_mix={"429": 0.1, "500": 0.1, "bad_json": 0.05}, seed=7, retry_after_s=1) as s:
        ds = ray_local.data.from_items([{"i": i, "messages": [{"role": "user", "content": f"q{i}"}]}
                                        for i in range(60)])
        ep = _ep(s, concurrency=2, batch_size=8, max_retries=1)
        df = call_dataset(ds, ep).to_pandas()
    assert sorted(df["i"]) == list(range(60))
    ok = df["api_error"].isna()
    assert (df.loc[ok, "api_text"].notna()).all() and (df.loc[~ok, "api_text"].isna()).all()
    # Every row either succeeded or ran out of retries; each request the server saw is accounted for.
    assert s.stats["ok_responses"] == ok.sum()
    assert s.stats["requests"] <= 60 * 2
