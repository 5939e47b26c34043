"""A real HTTP server speaking the OpenAI chat-completions protocol on 127.0.0.1, for tests and
benchmarks of everything that goes through litellm.

It answers with a responder (fixed text, echo, a scored JSON, or a real local model through
transformers) and can misbehave on purpose, to inject faults: 429 with Retry-After, 500, 503,
a response slower than the client's timeout, an invalid JSON body, an empty body, truncated
JSON. Faults come from a seeded random mix (``fault_mix``) or a deterministic script keyed by a
marker in the prompt (``[[fault:429,500]]`` = first attempt 429, second 500, then normal). Every
request is counted, so tests can check that the counts add up, and so is the Authorization
header each one carried (to prove an API key reached the endpoint).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from typing import Callable

from tests.support.ports import free_ports, wait_port

Responder = Callable[[list[dict], dict], str]
_MARK = re.compile(r"\[\[fault:([a-z0-9_,]+)\]\]")
FAULTS = ("429", "500", "503", "timeout", "bad_json", "empty", "truncated")


def fixed(text: str) -> Responder:
    return lambda messages, body: text


def echo_json() -> Responder:
    """{"response": <the last user message, shortened>} (a well-behaved generator)."""
    def respond(messages, body):
        last = messages[-1]["content"] if messages else ""
        return json.dumps({"response": "You asked: " + " ".join(last.split()[-8:])})
    return respond


def hf_responder(model_path: str, max_new_tokens: int = 32) -> Responder:
    """Generate with a real local model (transformers), serialised: a small real endpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    lock = threading.Lock()

    def respond(messages, body):
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        n = min(int(body.get("max_tokens") or body.get("max_completion_tokens") or max_new_tokens), max_new_tokens)
        with lock, torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False)
        return tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return respond


class OpenAIServer:
    def __init__(self, responder: Responder | None = None, *, latency_s: float = 0.0, fault_mix: dict | None = None,
                 seed: int = 0, retry_after_s: float = 1, slow_s: float = 30.0, model_name: str = "loopback",
                 rpm_limit: float | None = None, latency_fn: Callable[[random.Random], float] | None = None,
                 token_counter: Callable[[list[dict], str], tuple[int, int]] | None = None):
        self.responder = responder or echo_json()
        # (messages, reply) -> (prompt, completion) tokens it bills; None: whitespace words.
        self.token_counter = token_counter
        self.latency_s, self.fault_mix, self.retry_after_s, self.slow_s = latency_s, fault_mix or {}, retry_after_s, slow_s
        self.latency_fn = latency_fn   # a latency distribution (benchmarks); latency_s when None
        self.model_name = model_name
        # A provider's quota: requests beyond rpm_limit are answered 429. Its bucket holds five
        # seconds' worth (providers count per minute), so a client pacing at the limit is not
        # refused for the scheduling jitter of a loaded 2-core machine; one that goes past it is.
        self.rpm_limit = rpm_limit
        self._quota = [5.0 * rpm_limit / 60.0 if rpm_limit else 0.0, time.monotonic()]
        self.rng = random.Random(seed)
        self.stats: Counter = Counter()
        self.attempts: dict[str, int] = defaultdict(int)   # per prompt text
        self.times: list[float] = []                       # arrival time of each request
        self.in_flight = 0
        self.max_in_flight = 0
        self.authorizations: Counter = Counter()          # Authorization header values received
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- fault selection ---------------------------------------------------------------------
    def _choose(self, prompt: str) -> str:
        with self._lock:
            attempt = self.attempts[prompt]
            self.attempts[prompt] += 1
            m = _MARK.search(prompt)
            if m:
                script = m.group(1).split(",")
                return script[attempt] if attempt < len(script) else "ok"
            r = self.rng.random()
        acc = 0.0
        for kind, p in self.fault_mix.items():
            acc += p
            if r < acc:
                return kind
        return "ok"

    def _over_quota(self) -> bool:
        if not self.rpm_limit:
            return False
        with self._lock:
            rate, now = self.rpm_limit / 60.0, time.monotonic()
            level = min(5.0 * rate, self._quota[0] + (now - self._quota[1]) * rate)
            self._quota[1] = now
            if level < 1.0:
                self._quota[0] = level
                self.stats["over_quota"] += 1
                return True
            self._quota[0] = level - 1.0
            return False

    # -- HTTP ----------------------------------------------------------------------------------
    async def _chat(self, request):
        from aiohttp import web

        self.times.append(time.time())
        self.authorizations[request.headers.get("Authorization")] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            messages = body.get("messages", [])
            prompt = "\n".join(str(m.get("content", "")) for m in messages)
            kind = "429" if self._over_quota() else self._choose(prompt)
            self.stats["requests"] += 1
            self.stats[kind] += 1
            delay = self.latency_fn(self.rng) if self.latency_fn else self.latency_s
            if delay:
                await asyncio.sleep(delay)
            if kind == "429":
                return web.json_response({"error": {"message": "rate limited", "type": "rate_limit_error"}},
                                         status=429, headers={"Retry-After": str(self.retry_after_s)})
            if kind in ("500", "503"):
                return web.json_response({"error": {"message": f"injected {kind}", "type": "server_error"}},
                                         status=int(kind))
            if kind == "timeout":
                await asyncio.sleep(self.slow_s)
            if kind == "bad_json":
                return web.Response(text="<html>definitely not json", content_type="application/json")
            if kind == "empty":
                return web.Response(body=b"", content_type="application/json")
            text = await asyncio.get_running_loop().run_in_executor(None, self.responder, messages, body)
            if self.token_counter is not None:
                n_in, n_out = await asyncio.get_running_loop().run_in_executor(None, self.token_counter, messages, text)
            else:
                n_in, n_out = max(1, len(prompt.split())), max(1, len(text.split()))
            payload = {
                "id": f"chatcmpl-{self.stats['requests']}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.model_name),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            }
            raw = json.dumps(payload)
            if kind == "truncated":
                return web.Response(text=raw[: len(raw) // 2], content_type="application/json")
            self.stats["ok_responses"] += 1
            # The provider's own accounting of what it billed (benchmarks compare it to the run's cost).
            self.stats["prompt_tokens"] += payload["usage"]["prompt_tokens"]
            self.stats["completion_tokens"] += payload["usage"]["completion_tokens"]
            return web.Response(text=raw, content_type="application/json")
        finally:
            self.in_flight -= 1

    async def _models(self, request):
        from aiohttp import web

        return web.json_response({"object": "list", "data": [{"id": self.model_name, "object": "model"}]})

    def start(self) -> "OpenAIServer":
        from aiohttp import web

        self.port = free_ports(1)[0]
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_get("/v1/models", self._models)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", self.port, backlog=1024)
            self._loop.run_until_complete(site.start())
            self._runner = runner
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True, name="openai-loopback")
        self._thread.start()
        ready.wait(10)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
