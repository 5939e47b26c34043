"""The local OpenAI-compatible server (persodpo.local_server) that judges and API generators can
use offline: a real model behind HTTP, called through litellm."""

import asyncio

import pytest

from persodpo.llm_api import ApiEndpoint, LiteLLMClient
from persodpo.local_server import LocalServer, parse_local


def test_local_api_bases_are_recognised():
    assert parse_local("local:packaged:smollm2-135m-instruct") == ("transformers", "packaged:smollm2-135m-instruct")
    assert parse_local("local+vllm:tiny:llama") == ("vllm", "tiny:llama")
    assert parse_local("http://127.0.0.1:8000/v1") is None and parse_local(None) is None
    with pytest.raises(ValueError, match="name the model"):
        parse_local("local:")


def test_two_servers_started_side_by_side_answer_concurrent_requests_and_stay_up(caplog):
    """local_servers launches every server before waiting for any (evaluate's base and trained
    model); each keeps its first process (no watchdog restart) while it answers."""
    import time

    from persodpo.local_server import local_servers

    bases = ["local:tiny:llama", "local:tiny:qwen2"]
    caplog.set_level("WARNING", logger="persodpo.local_server")
    with local_servers([(b, "openai/local") for b in bases]) as urls:
        servers = {}
        results = []
        for base in bases:
            client = LiteLLMClient(ApiEndpoint(model="openai/local", api_base=urls[base], max_in_flight=8,
                                               timeout_s=60, max_retries=0))

            async def ask_all():
                msgs = [[{"role": "user", "content": f"Question number {i}: how are you?"}] for i in range(6)]
                return await asyncio.gather(*(client.complete(m, max_tokens=5, temperature=0) for m in msgs))

            results += asyncio.run(ask_all())
        time.sleep(6)      # past a watchdog check: a server whose launching thread ended would be gone
        for base in bases:
            client = LiteLLMClient(ApiEndpoint(model="openai/local", api_base=urls[base], timeout_s=60,
                                               max_retries=0))
            r = asyncio.run(client.complete([{"role": "user", "content": "still there?"}], max_tokens=2))
            servers[base] = r.error
    for r in results:
        assert r.error is None, r.error
        assert isinstance(r.text, str)
        assert r.prompt_tokens > 5 and 1 <= r.completion_tokens <= 5
        assert r.finish_reason in ("length", "stop")
    assert servers == {b: None for b in bases}
    assert not [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]


def test_a_server_stops_with_its_context():
    with LocalServer("tiny:llama", max_batch=4, health_interval_s=0) as server:
        assert server.healthy()
    assert server.proc.poll() is not None


def test_a_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        LocalServer(str(tmp_path / "missing-model-dir")).start()


def test_a_server_that_dies_is_restarted_on_its_port_and_answers_again():
    import os
    import signal
    import time

    with LocalServer("tiny:llama", max_batch=4, health_interval_s=0.5, max_restarts=1) as server:
        client = LiteLLMClient(ApiEndpoint(model="openai/local", api_base=server.api_base, timeout_s=60,
                                           max_retries=0))

        def ask():
            return asyncio.run(client.complete([{"role": "user", "content": "hello"}], max_tokens=3, temperature=0))

        assert ask().error is None
        first = server.proc.pid
        os.killpg(first, signal.SIGKILL)        # an engine that died (the demo judge's failure)
        deadline = time.time() + 120
        while time.time() < deadline and not (server.restarts == 1 and server.healthy()):
            time.sleep(0.2)
        assert server.restarts == 1 and server.proc.pid != first
        assert ask().error is None              # the same api_base answers again
        os.killpg(server.proc.pid, signal.SIGKILL)  # past max_restarts: stays down, loudly
        time.sleep(3)
        assert server.restarts == 1 and not server.healthy()
        assert ask().error is not None
