"""Configuration of the scoring stage: metrics and judges are configuration.

    score:
      word_limit: 110                 # the window the generator was asked for
      metrics:                        # names from persodpo.score.registry (a plain name or a mapping)
        - format                      # raw output: format_ok + its four parts
        - length                      # text: length_ok, length_words
        - persona_coverage
        - reference                   # ref_bleu, ref_chrf, ref_rouge_l vs gold
        - {name: c_score, model: cross-encoder/nli-deberta-v3-base, num_gpus: 1}
        - {name: persona_similarity, model: packaged:all-minilm-l6-v2}
      judges:                         # litellm endpoints (persodpo.llm_api.ApiEndpoint) with a name
        - {name: gpt4o, model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY, generator: gpt-4o-mini}
      panel: {dimensions: [coherence, personalization], budget_usd: 5.0}

Every model name here is configuration; the defaults run offline on one machine.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from persodpo.llm_api import ApiEndpoint
from persodpo.sections import Section

_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,40}$")



class MetricSpec(Section):
    """One metric from the registry. Model-based metrics run in a class-based actor pool; metrics
    that name the same model (and device settings) share one pool, so the model loads once."""

    name: str
    model: str | None = Field(None, description="model-based metrics: hub id, local dir, packaged:..., tiny:...")
    params: dict[str, Any] = Field(default_factory=dict, description="metric-specific options")
    batch_size: int = Field(64, ge=1, description="rows per batch sent to a model actor")
    concurrency: int | tuple[int, int] = Field(1, description="model actors: n, or (min, max) to autoscale")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="per model actor; 1 (or a fraction) on GPU clusters")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class JudgeSpec(ApiEndpoint):
    """An LLM judge: any litellm endpoint, plus a short name used in column names."""

    name: str
    generator: str | None = Field(None, description="the generator name under which this judge's own model "
                                                    "appears in the candidates (skipped when panel.skip_own_generator)")
    constrained: Literal["json_schema", "regex", "none"] = Field(
        "json_schema", description="json_schema: OpenAI/vLLM response_format; regex: vLLM structured_outputs; "
                                   "none: free text, parsed tolerantly")
    max_in_flight: int = Field(8, ge=1)
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 16})

    @field_validator("model")
    @classmethod
    def _provider(cls, v: str) -> str:
        # Without it litellm guesses a provider per request (or fails every request at run time).
        if "/" not in v:
            raise ValueError(f"judge model {v!r} needs litellm's provider prefix, e.g. openai/{v}")
        return v

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not _SLUG.match(v):
            raise ValueError(f"judge name {v!r} must match {_SLUG.pattern} (it becomes part of column names)")
        return v


class PanelConfig(Section):
    """How the judges are asked and how their judgments are combined."""

    dimensions: list[str] = Field(default_factory=lambda: ["coherence", "personalization"])
    rubrics: dict[str, str] = Field(
        default_factory=lambda: {"coherence": "judge-coherence-v1", "personalization": "judge-personalization-v1"},
        description="dimension -> packaged rubric name (persodpo/score/templates/<name>.txt) or a file path")
    scale: tuple[int, int] = (1, 5)
    context_turns: int = Field(6, ge=1, description="last turns of the dialogue shown to the judge")
    skip_own_generator: bool = True
    audit_own_share: float = Field(
        0.1, ge=0.0, le=1.0, description="with skip_own_generator: share of a judge's own generator's replies it still "
                                         "scores for the self-preference audit only (never in the panel; costs requests)")
    max_error_share: float = Field(
        0.5, ge=0.0, le=1.0, description="the stage fails (nothing committed) when more of a judge's requests than this "
                                         "failed or gave no usable score: null columns would silently drop candidates")
    budget_usd: float | None = Field(None, gt=0, description="stop sending judge requests before this is exceeded")
    cost_safety_factor: float = Field(1.25, ge=1.0, description="prompt-token estimate margin for budget reservations")
    cache: str | None = Field("auto", description="judge cache URI (local or s3://); 'auto' = <output>.judge-cache; "
                                                  "null = no cache")
    pairwise: bool = Field(False, description="also judge pairs of replies of each prompt, each pair in both orders "
                                              "(A/B and B/A); a verdict counts only when the orders agree "
                                              "(persodpo.score.pairwise; table <output>/pairwise)")
    pairwise_max_per_prompt: int = Field(10, ge=1, description="pairs judged per prompt, best-first by the pointwise "
                                                               "panel when there is one")
    pairwise_rubrics: dict[str, str] = Field(
        default_factory=lambda: {"coherence": "judge-pairwise-coherence-v1",
                                 "personalization": "judge-pairwise-personalization-v1"},
        description="dimension -> pairwise rubric ($reply_a, $reply_b; answer {\"winner\": \"A\"|\"B\"|\"tie\"})")

    @model_validator(mode="after")
    def _rubric_per_dimension(self) -> "PanelConfig":
        missing = [d for d in self.dimensions if d not in self.rubrics]
        if missing:
            raise ValueError(f"no rubric for dimension(s) {missing}; set panel.rubrics.<dimension>")
        bad = [d for d in self.dimensions if not _SLUG.match(d)]
        if bad:
            raise ValueError(f"dimension names {bad} must match {_SLUG.pattern}")
        missing = [d for d in self.dimensions if self.pairwise and d not in self.pairwise_rubrics]
        if missing:
            raise ValueError(f"pairwise: no pairwise rubric for dimension(s) {missing}; set "
                             "panel.pairwise_rubrics.<dimension>")
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale {self.scale}: low must be below high")
        return self


def _default_metrics() -> list[MetricSpec]:
    # Each metric's default model lives on its class (persodpo.score.registry), so this module
    # needs no metric module at import time (they import it for type hints only).
    from persodpo.score.embeddings import PersonaSimilarity

    return [MetricSpec(name=n) for n in ("format", "length", "persona_coverage", "reference")] + [
        MetricSpec(name="persona_similarity", model=PersonaSimilarity.default_model)]


class ScoreConfig(Section):
    input: str | None = None
    prompts: str | None = None
    output: str | None = None
    word_limit: int = Field(110, ge=1, description="the reply word limit the generator was asked for")
    min_words: int = Field(1, ge=0, description="lower end of the accepted word window")
    response_format: Literal["auto", "json", "plain"] = Field(
        "auto", description="auto: from each candidate's template (persodpo.prompting)")
    metrics: list[MetricSpec] = Field(default_factory=_default_metrics)
    judges: list[JudgeSpec] = Field(default_factory=list)
    panel: PanelConfig = Field(default_factory=PanelConfig)
    block_rows: int = Field(1000, ge=1, description="rows per Ray Data block (parallelism of the CPU metrics)")
    actor_block_rows: int = Field(64, ge=1, description="rows per block sent to model and judge actor pools "
                                                        "(a block goes to one actor: small blocks spread the work)")
    rows_per_part: int = Field(100_000, ge=1, description="rows per output Parquet part")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[MetricSpec]) -> list[MetricSpec]:
        from persodpo.score.registry import REGISTRY

        unknown = [m.name for m in v if m.name not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(REGISTRY)}")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "ScoreConfig":
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric(s) listed twice: {dup}")
        jn = [j.name for j in self.judges]
        dup = sorted({n for n in jn if jn.count(n) > 1})
        if dup:
            raise ValueError(f"judge name(s) used twice: {dup}")
        if self.min_words > self.word_limit:
            raise ValueError(f"min_words {self.min_words} > word_limit {self.word_limit}")
        return self
