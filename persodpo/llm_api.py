"""Calling LLM APIs through litellm: one endpoint config, an async client, and a Ray Data UDF.

Used by API generators (closed models, any OpenAI-compatible server) and by LLM judges.

- litellm's Router does the calling: provider routing (OpenAI, Anthropic, Bedrock via boto3,
  any ``api_base``), retries with exponential backoff that honour ``Retry-After``, timeouts,
  token usage and cost (prices registered for models litellm does not know).
- Requests/tokens per minute are *paced* (``persodpo.rate_limit``): one limiter per endpoint shared
  by all of its actors. The Router's own rpm/tpm limits only reject requests (and only under
  usage-based routing), which wastes quota and retries instead of spreading requests evenly.
- Keys come from the environment only (``api_key_env`` names the variable); nothing here logs or
  returns a key, a prompt or a reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import Field, field_validator

from persodpo.rate_limit import client_limiter
from persodpo.sections import Section

log = logging.getLogger(__name__)

# Output columns of ApiBatchCaller (prefix configurable).
RESULT_FIELDS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s",
                 "attempts", "error")


_SECRET_WORDS = {"key", "secret", "token", "password", "passwd", "credentials"}


def refuse_secrets(v: dict, *, env: bool = False) -> dict:
    """Refuse request fields (or, ``env=True``, environment variables) that look like secrets: a key
    written into configuration would end up in manifests, data cards and logs."""
    if env:  # variable names: HF_TOKEN, OPENAI_API_KEY (not TOKENIZERS_PARALLELISM)
        bad = [k for k in v if _SECRET_WORDS & set(str(k).lower().split("_"))]
    else:
        bad = [k for k in v if "key" in k.lower() or "secret" in k.lower() or "token" == k.lower()]
    if bad:
        raise ValueError(f"{bad}: secrets are never configuration; use api_key_env" if not env else
                         f"{bad}: secrets are never configuration; set them in the nodes' environment")
    return v


class ApiEndpoint(Section):
    """One model behind an API, as litellm names it (``openai/gpt-4o-mini``, ``anthropic/...``,
    ``bedrock/...``, or ``openai/<served name>`` with ``api_base`` for any OpenAI-compatible server)."""

    model: str
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the key")
    concurrency: int | tuple[int, int] = Field(1, description="actors: n, or (min, max) to autoscale")
    max_in_flight: int = Field(16, ge=1, description="concurrent requests per actor")
    batch_size: int = Field(16, ge=1)
    rpm: int | None = Field(None, ge=1, description="requests per minute for this endpoint (all actors)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute for this endpoint (all actors)")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_min_s: float = Field(0.0, ge=0, description="minimum wait before a retry (Retry-After wins if larger)")
    input_cost_per_token: float | None = Field(None, ge=0, description="USD; registers prices litellm lacks")
    output_cost_per_token: float | None = Field(None, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="temperature, max_tokens, response_format, extra_body, ...")
    num_cpus: float = Field(0.25, gt=0, description="CPU reserved per actor (API actors mostly wait)")

    @field_validator("params")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return refuse_secrets(v)

    def max_actors(self) -> int:
        return self.concurrency[1] if isinstance(self.concurrency, tuple) else self.concurrency

    def api_key(self) -> str | None:
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                from persodpo.errors import ConfigError

                raise ConfigError(f"environment variable {self.api_key_env} is not set (API key for {self.model})",
                                  key="api_key_env")
            return key
        # OpenAI-compatible local servers (vLLM, ours) accept any key; litellm insists on one.
        return "EMPTY" if self.api_base else None


@dataclass
class ApiResult:
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_s: float | None = None
    attempts: int | None = None
    error: str | None = None


def register_prices(ep: ApiEndpoint) -> None:
    """Tell litellm the prices the config gives for a model it does not know (cost tracking)."""
    if ep.input_cost_per_token is None and ep.output_cost_per_token is None:
        return
    import litellm

    provider, _, bare = ep.model.partition("/")
    entry = {"input_cost_per_token": ep.input_cost_per_token or 0.0,
             "output_cost_per_token": ep.output_cost_per_token or 0.0,
             "litellm_provider": provider if bare else "openai", "mode": "chat"}
    litellm.register_model({ep.model: entry, **({bare: entry} if bare else {})})


def _short_error(exc: BaseException) -> str:
    # Class name + first line, without request bodies (which hold prompts) or headers.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


class LiteLLMClient:
    """Async completions for one endpoint. ``limiter``: the endpoint's shared limiter actor
    (``persodpo.rate_limit.endpoint_limiter``); without one this client paces the whole limits."""

    def __init__(self, ep: ApiEndpoint, limiter: Any = None, *, name: str | None = None, kind: str = "generate"):
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        logging.getLogger("LiteLLM").setLevel(logging.ERROR)  # per-call INFO lines would drown progress
        litellm.telemetry = False
        register_prices(ep)
        self.ep = ep
        params = {"model": ep.model, "timeout": ep.timeout_s}
        if ep.api_base:
            params["api_base"] = ep.api_base
        key = ep.api_key()
        if key:
            params["api_key"] = key
        self.router = litellm.Router(
            model_list=[{"model_name": "endpoint", "litellm_params": params}],
            num_retries=ep.max_retries, retry_after=ep.retry_min_s, timeout=ep.timeout_s,
            disable_cooldowns=True,  # one deployment: a cooldown would fail every request for a while
        )
        self.limiter = client_limiter(ep, limiter)
        self.semaphore: asyncio.Semaphore | None = None
        self.name, self.kind = name or ep.model, kind  # tags of its Ray metrics (persodpo.api_metrics)

    async def complete(self, messages: list[dict], **overrides) -> ApiResult:
        """One chat completion; never raises: failures come back as ``ApiResult.error``."""
        from persodpo.api_metrics import record

        result = await self._complete(messages, **overrides)
        record(self.name, self.kind, result)
        return result

    async def _complete(self, messages: list[dict], **overrides) -> ApiResult:
        if self.semaphore is None:
            self.semaphore = asyncio.Semaphore(self.ep.max_in_flight)
        params = {**self.ep.params, **overrides}
        est = int(params.get("max_tokens") or 256) + sum(len(str(m.get("content", ""))) // 4 for m in messages)
        async with self.semaphore:
            await self.limiter.acquire(est)
            t0 = time.monotonic()
            try:
                resp = await self.router.acompletion(model="endpoint", messages=messages, **params)
            except Exception as exc:  # noqa: BLE001 - recorded per row, the stage decides what to do
                return ApiResult(latency_s=time.monotonic() - t0, error=_short_error(exc),
                                 attempts=self.ep.max_retries + 1)
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        cost = (getattr(resp, "_hidden_params", None) or {}).get("response_cost")
        if cost is None:
            try:
                import litellm

                cost = litellm.completion_cost(completion_response=resp)
            except Exception:  # noqa: BLE001 - unknown price: cost stays unknown, not zero
                cost = None
        return ApiResult(text=choice.message.content, finish_reason=choice.finish_reason,
                         prompt_tokens=getattr(usage, "prompt_tokens", None),
                         completion_tokens=getattr(usage, "completion_tokens", None),
                         cost_usd=float(cost) if cost is not None else None,
                         latency_s=time.monotonic() - t0, attempts=None)


class ApiBatchCaller:
    """Ray Data UDF (async callable class): one LiteLLMClient per actor; every row of a batch is
    sent concurrently (up to ``max_in_flight``), and Ray Data overlaps several batches per actor.

    Reads ``messages_column`` (list of {role, content}) and optional per-row ``params_column``
    (dict of request overrides); writes ``<prefix>text``, ``<prefix>error``, ... (RESULT_FIELDS).
    Rows whose messages are null are passed through with ``error = "skipped"``.
    """

    def __init__(self, endpoint: dict, messages_column: str = "messages", prefix: str = "api_",
                 params_column: str | None = None, limiter: Any = None, ledgers: list | None = None,
                 name: str | None = None):
        self.ep = ApiEndpoint.model_validate(endpoint)
        self.client = LiteLLMClient(self.ep, limiter=limiter, name=name)
        self.messages_column, self.prefix, self.params_column = messages_column, prefix, params_column
        self.ledgers = list(ledgers or [])  # budget caps (persodpo.budget): reserve, send, settle

    async def _paid(self, messages: list[dict], params: dict) -> ApiResult:
        from persodpo.budget import reserve_all, worst_case_cost

        p = {**self.ep.params, **params}
        worst = worst_case_cost(self.ep.model, messages, int(p.get("max_tokens") or p.get("max_completion_tokens")
                                                            or 1024))
        if not await reserve_all(self.ledgers, worst):
            states = [await led.state.remote() for led in self.ledgers]
            full = next((x for x in states if x["spent_usd"] + x["reserved_usd"] + worst > x["cap_usd"]), states[0])
            return ApiResult(error=f"budget: cap ${full['cap_usd']:g} reached (spent ${full['spent_usd']:.6f}; this "
                                   f"request could cost up to ${worst:.6f}); not sent")
        res = await self.client.complete(messages, **params)
        actual = res.cost_usd if res.cost_usd is not None else (worst if res.error is None else 0.0)
        for led in self.ledgers:
            await led.settle.remote(worst, actual)
        return res

    async def __call__(self, batch):
        msgs = list(batch[self.messages_column])
        params = list(batch[self.params_column]) if self.params_column else [None] * len(msgs)

        async def one(m, p):
            if m is None:
                return ApiResult(error="skipped")
            messages, params = [dict(x) for x in m], (dict(p) if p else {})
            if self.ledgers:
                return await self._paid(messages, params)
            return await self.client.complete(messages, **params)

        results = await asyncio.gather(*(one(m, p) for m, p in zip(msgs, params)))
        out = batch.copy()
        for f in RESULT_FIELDS:
            out[self.prefix + f] = [asdict(r)[f] for r in results]
        return out


def call_dataset(ds, endpoint: ApiEndpoint, *, messages_column: str = "messages", prefix: str = "api_",
                 params_column: str | None = None, ledgers: list | None = None, name: str | None = None):
    """``ds.map_batches`` through an actor pool of ApiBatchCaller for ``endpoint`` (``name``: the
    generator's, in its Ray metrics)."""
    from persodpo.rate_limit import endpoint_limiter

    return ds.map_batches(
        ApiBatchCaller,
        fn_constructor_kwargs={"endpoint": endpoint.model_dump(mode="json"), "messages_column": messages_column,
                               "prefix": prefix, "params_column": params_column,
                               "limiter": endpoint_limiter(endpoint), "ledgers": ledgers, "name": name},
        batch_size=endpoint.batch_size, compute=api_actor_pool(endpoint.concurrency),
        num_cpus=endpoint.num_cpus, batch_format="pandas",
    )


# API actors (generators and judges) work on a few blocks at once: with one, the requests in flight
# drain to zero at the end of every block while the slowest replies of the latency tail arrive
# (the actor's semaphore still caps what is in flight). They hold no more than that, so blocks go to
# whichever actor frees up instead of queueing at the first one started.
API_BLOCKS_PER_ACTOR = 2


def actor_pool(concurrency: int | tuple[int, int], *, tasks_per_actor: int | None = None):
    """Ray Data actor pool: a fixed size, or (min, max) so the pool autoscales with the cluster;
    ``tasks_per_actor``: blocks sent to an actor at once, and as many calls running in it (an async
    actor interleaves them in its event loop)."""
    from ray.data import ActorPoolStrategy

    kw = {"max_tasks_in_flight_per_actor": tasks_per_actor,
          "max_concurrent_calls_per_actor": tasks_per_actor} if tasks_per_actor else {}
    if isinstance(concurrency, (tuple, list)):
        return ActorPoolStrategy(min_size=int(concurrency[0]), max_size=int(concurrency[1]), **kw)
    return ActorPoolStrategy(size=int(concurrency), **kw)


def api_actor_pool(concurrency: int | tuple[int, int]):
    """The pool of an API actor: ``API_BLOCKS_PER_ACTOR`` blocks in flight and running in each."""
    return actor_pool(concurrency, tasks_per_actor=API_BLOCKS_PER_ACTOR)
