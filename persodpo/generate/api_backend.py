"""API generators: any litellm model through persodpo.llm_api's async actor pool (rate limits,
retries honouring Retry-After, timeouts, token and cost accounting)."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from persodpo.generate import candidates
from persodpo.generate.config import GenerateConfig, GeneratorConfig
from persodpo.generate.requests import build_requests, light_map
from persodpo.llm_api import ApiEndpoint, call_dataset
from persodpo.prompting import max_new_tokens

log = logging.getLogger(__name__)


def endpoint(gen: GeneratorConfig, template: str, word_limit: int, api_base: str | None = None) -> ApiEndpoint:
    """The generator's endpoint with its sampling folded into the request parameters
    (explicit ``api.params`` win)."""
    ep = gen.endpoint(api_base)
    s = gen.sampling
    params: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p,
                              "max_tokens": s.max_tokens or max_new_tokens(template, word_limit),
                              # Providers that lack a parameter (e.g. seed) get it dropped, not a 400.
                              "drop_params": True}
    if s.stop:
        params["stop"] = list(s.stop)
    params.update(s.extra)
    params.update(ep.params)
    return ep.model_copy(update={"params": params})


def api_requests(batch: pa.Table, *, generator: str, samples: int, template: str, word_limit: int,
                 seed: int | None, skip_ids: frozenset, only_prompts: frozenset | None) -> pa.Table:
    table = build_requests(batch, generator=generator, samples=samples, template=template, word_limit=word_limit,
                           seed=seed, skip_ids=skip_ids, only_prompts=only_prompts)
    if seed is None:
        return table
    # Per-request overrides for ApiBatchCaller: the sample's own seed.
    seeds = table.column("seed").to_pylist()
    return table.append_column("api_params", pa.array([{"seed": s} for s in seeds],
                                                      pa.struct([("seed", pa.int64())])))


def _to_candidates(batch: pa.Table) -> pa.Table:
    return candidates.from_api(batch)


def generate(prompts, gen: GeneratorConfig, gcfg: GenerateConfig, *, api_base: str | None = None,
             skip_ids: frozenset = frozenset(), only_prompts: frozenset | None = None, ledgers: list | None = None):
    """prompts dataset -> candidates dataset for one API generator (lazy)."""
    template = gcfg.template_of(gen)
    ep = endpoint(gen, template, gcfg.word_limit, api_base)
    ep.api_key()  # a missing key variable is a ConfigError now, not one error row per request
    requests = prompts.map_batches(
        api_requests, batch_format="pyarrow", zero_copy_batch=True, **light_map(),
        fn_kwargs=dict(generator=gen.name, samples=gen.samples, template=template, word_limit=gcfg.word_limit,
                       seed=gen.sampling.seed, skip_ids=skip_ids, only_prompts=only_prompts),
    # One block per batch, so every actor of the pool gets work and batches overlap.
    ).repartition(target_num_rows_per_block=ep.batch_size)
    log.info("generator %s: API %s%s, %s actor(s) x %d in flight, rpm=%s tpm=%s", gen.name, ep.model,
             f" at {ep.api_base}" if ep.api_base else "", ep.concurrency, ep.max_in_flight, ep.rpm, ep.tpm)
    answered = call_dataset(requests, ep, messages_column="messages",
                            params_column="api_params" if gen.sampling.seed is not None else None, ledgers=ledgers,
                            name=gen.name)
    return answered.map_batches(_to_candidates, batch_format="pyarrow", **light_map())
