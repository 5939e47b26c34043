"""Configuration of iterative DPO (``run.rounds: N``, N > 1): what changes from round to round.

    run:
      rounds: 3
    rounds:
      policy_samples: 4            # the trained model's own replies per prompt, each round
      policy_engine: vllm          # ray.data.llm (or transformers: a local: server, one machine)
      keep_generators: false       # the configured generators again (their candidates reused)
      prompts: fresh               # fresh | same prompts each round
      prompts_per_round: 2000
      reference: previous          # DPO reference: the round's start model, or the original base

Round 1 is the one-round pipeline; round k+1 generates with round k's model (generator
``policy_name``), builds on-policy pairs (``pairs.persodpo.on_policy``), trains from round k's
weights and evaluates on the same held-out prompts (persodpo.rounds.wiring).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persodpo.generate.config import SamplingConfig, VllmOptions
from persodpo.sections import Section


class RoundsSection(Section):
    policy_name: str = Field("policy", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$",
                             description="generator name of the previous round's model (in candidate ids)")
    policy_samples: int = Field(4, ge=2, le=64, description="replies per prompt of the policy (best vs worst needs 2+)")
    policy_engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="vllm: ray.data.llm engines on the cluster; transformers: a local: server on this "
                            "machine (local Ray only, like evaluate.engine)")
    policy_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0),
                                            description="the policy's sampling (seeded per prompt and sample)")
    policy_vllm: VllmOptions | None = Field(None, description="engine options of the policy; default: those of the "
                                                              "first vllm generator")
    keep_generators: bool = Field(False, description="the configured generators answer every round too; candidates "
                                                     "they already wrote for the same prompts are reused, not "
                                                     "regenerated (generate.reuse_from)")
    prompts: Literal["same", "fresh"] = Field(
        "same", description="same: every round answers generate's prompts; fresh: round k answers the k-th slice "
                            "of prompts_per_round prompts (round 1 included)")
    prompts_per_round: int | None = Field(None, ge=1, description="prompts per round (fresh: required; same: the "
                                                                  "first N, default all)")
    on_policy: bool = Field(True, description="rounds 2+: pairs among the policy's samples "
                                              "(pairs.persodpo.on_policy, off_policy_share mixes others in)")
    reference: Literal["previous", "original"] = Field(
        "previous", description="DPO reference of round k+1: round k's model (the start of that round) or "
                                "the original train.model")
