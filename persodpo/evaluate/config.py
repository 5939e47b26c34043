"""Configuration of held-out evaluation and the report.

    evaluate:
      prompts: s3://bucket/run/ingest      # held-out prompts (a prompts table); `run` wires the ingest output
      split: valid
      max_prompts: 200
      baselines:                           # other models to compare (e.g. the `simple` recipe's model)
        - {name: simple-dpo, model: s3://bucket/runs/simple/train}
      authors_outputs: /data/authors       # an authors' import: their valid-set outputs join the comparison
      judges:                              # held-out judges (default: the score section's, with a warning)
        - {name: claude, model: anthropic/claude-3-5-haiku-latest, api_key_env: ANTHROPIC_API_KEY}
      metrics: [format, length, persona_coverage, reference]   # default: the score section's

The trained model (``input``: the train stage output) and the base model (``train.model``) are
generated with the same template and sampling as the training data (``generate`` section) and, by
default, scored with the same metrics and judges (``score`` section). A judge that built the
training pairs grades the model by the reward it was trained on: ``judges`` / ``metrics`` name
evaluation's own, and reusing a training judge is warned about (persodpo.score.heldout).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persodpo.score.config import JudgeSpec, MetricSpec
from persodpo.sections import Section


class EvalModel(Section):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    model: str = Field(..., description="hub id, local dir, s3:// model dir, packaged:..., tiny:...")


class EvaluateConfig(Section):
    input: str | None = Field(None, description="train stage output (the DPO model directory); null: base only")
    output: str | None = None
    prompts: str | None = Field(None, description="held-out prompts table URI")
    split: str | None = Field("valid", description="keep prompts of this split (null: all)")
    max_prompts: int | None = Field(None, ge=1)
    include_base: bool = Field(True, description="also evaluate the base model (train.model)")
    base_name: str = "base"
    trained_name: str = "dpo"
    baselines: list[EvalModel] = Field(default_factory=list)
    authors_outputs: str | None = Field(None, description="root of a `persodpo ingest --source persodpo-authors` output")
    engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm: ray.data.llm's vLLM processor (the generate section's first vllm generator's "
                            "options); transformers: persodpo's local OpenAI server through litellm (tiny models, "
                            "tests: starts in seconds)")
    temperature: float = Field(0.0, ge=0, description="greedy by default: the comparison should not hinge on sampling")
    judges: bool | list[JudgeSpec] = Field(
        True, description="true: the score section's LLM judges (warned: they built the training pairs); false: none; "
                          "a list: evaluation's own judges, held out from training")
    metrics: list[MetricSpec] | None = Field(None, description="null: the score section's metrics; a list: its own")
    length_buckets: int = Field(4, ge=1, le=20)
