"""Requests, errors, tokens, cost and latency of every API generator and judge as Ray metrics
(``ray.util.metrics``), so the Ray dashboard and Prometheus show a long run's health while it runs.

Each actor records its own requests; Ray's metrics agent on each node exports the sums at its
``metrics_export_port`` (Prometheus text; Ray prefixes the names with ``ray_``):

- ``persodpo_api_requests`` (counter; tags ``name``, ``kind`` = generate | judge, ``outcome`` =
  ok | error)
- ``persodpo_api_tokens`` (counter; tags ``name``, ``kind``, ``direction`` = prompt | completion)
- ``persodpo_api_cost_usd`` (counter; tags ``name``, ``kind``)
- ``persodpo_api_latency_s`` (histogram; tags ``name``, ``kind``)

Retries happen inside litellm's Router and are not seen one by one: a failed request counts its
attempts under ``outcome=error`` once. Outside Ray (a client in a plain process) nothing is
recorded.
"""

from __future__ import annotations

_METRICS: dict | None = None
LATENCY_BOUNDARIES = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0]


def _metrics() -> dict | None:
    global _METRICS
    if _METRICS is None:
        import ray

        if not ray.is_initialized():
            return None
        from ray.util.metrics import Counter, Histogram

        _METRICS = {
            "requests": Counter("persodpo_api_requests", "API requests by outcome", ("name", "kind", "outcome")),
            "tokens": Counter("persodpo_api_tokens", "API tokens", ("name", "kind", "direction")),
            "cost": Counter("persodpo_api_cost_usd", "API cost in USD", ("name", "kind")),
            "latency": Histogram("persodpo_api_latency_s", "API request latency in seconds", LATENCY_BOUNDARIES,
                                 ("name", "kind")),
        }
    return _METRICS


def record(name: str, kind: str, result) -> None:
    """One finished request (a ``persodpo.llm_api.ApiResult``)."""
    m = _metrics()
    if m is None:
        return
    tags = {"name": name, "kind": kind}
    m["requests"].inc(1.0, {**tags, "outcome": "ok" if result.error is None else "error"})
    if result.prompt_tokens:
        m["tokens"].inc(float(result.prompt_tokens), {**tags, "direction": "prompt"})
    if result.completion_tokens:
        m["tokens"].inc(float(result.completion_tokens), {**tags, "direction": "completion"})
    if result.cost_usd:
        m["cost"].inc(float(result.cost_usd), tags)
    if result.latency_s is not None:
        m["latency"].observe(float(result.latency_s), tags)
