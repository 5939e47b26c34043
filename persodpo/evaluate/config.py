"""Configuration of held-out evaluation and the report.

    evaluate:
      prompts: s3://bucket/run/ingest      # held-out prompts (a prompts table); `run` wires the ingest output
      split: valid
      max_prompts: 200
      baselines:                           # other models to compare (e.g. the `simple` recipe's model)
        - {name: simple-dpo, model: s3://bucket/runs/simple/train}
      authors_outputs: /data/authors       # an authors' import: their valid-set outputs join the comparison

The trained model (``input``: the train stage output) and the base model (``train.model``) are
generated with the same template, sampling and metrics as the training data (``generate`` and
``score`` sections), so the comparison is like for like.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
    judges: bool = Field(True, description="run the score section's LLM judges on the held-out replies too")
    length_buckets: int = Field(4, ge=1, le=20)
