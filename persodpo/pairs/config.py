"""Configuration of pair construction (recipes, weights, thresholds, caps).

Metric columns are configuration: the paper recipes default to the authors' four columns
(``coh_unieval``, ``c_score``, ``ue_score``, ``persona_distance``, as the authors'-data import
names them) with the authors' exact weights; point ``weights`` at the scoring stage's columns to
use other metrics. One subsection per recipe, e.g. ``--set pairs.persodpo.min_margin=0.25``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from persodpo.sections import Section

# The recipe registry's names (persodpo.pairs.recipes.RECIPES holds the functions; a test keeps
# both in step). Listed here so a typo fails at config load, before any data is read.
RECIPE_NAMES = ("persodpo", "paper-length-prior", "paper-perso", "simple")

AUTHORS_WORST_CASE = {"coh_unieval": 0.0, "c_score": -1.0, "ue_score": 0.0, "persona_distance": 0.0}
# `persodpo` on the authors' four columns: coherence (one metric) weighs as much as
# personalisation (three). The default weights below name what the default score metrics write.
AUTHORS_PERSODPO_WEIGHTS = {"coh_unieval": 1.0, "c_score": 0.5, "ue_score": 0.25, "persona_distance": 0.25}
DEFAULT_PERSODPO_WEIGHTS = {"persona_similarity": 1.0, "persona_coverage": 0.5, "ref_rouge_l": 0.5}


def _check_weights(v: dict[str, float]) -> dict[str, float]:
    if not v:
        raise ValueError("at least one metric column with a weight is needed")
    for k, w in v.items():
        if not math.isfinite(w):
            raise ValueError(f"weight of {k!r} is not a finite number")
    return v


class PaperRecipeConfig(Section):
    """What both of the authors' recipes share (shared README, recipe steps 2, 3 and 5)."""

    weights: dict[str, float]
    worst_case: dict[str, float] = Field(
        default_factory=lambda: dict(AUTHORS_WORST_CASE),
        description="score given to each metric of an invalid (fallback) output before min-max")
    low_percentile: float = Field(40.0, ge=0, le=100, description="rejected: score <= this percentile")
    high_percentile: float = Field(60.0, ge=0, le=100, description="chosen: score >= this percentile")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v)

    @model_validator(mode="after")
    def _consistent(self):
        missing = [m for m in self.weights if m not in self.worst_case]
        if missing:
            raise ValueError(f"worst_case has no value for metric(s) {missing}")
        if self.low_percentile > self.high_percentile:
            raise ValueError("low_percentile must not exceed high_percentile")
        return self


class LengthPriorConfig(PaperRecipeConfig):
    """``0.15*(Coh + C + UE + PD) + 0.4*LP``, ``LP = clip(1 - words/max_words, 0, 1)``."""

    weights: dict[str, float] = Field(default_factory=lambda: {
        "coh_unieval": 0.15, "c_score": 0.15, "ue_score": 0.15, "persona_distance": 0.15})
    length_prior_weight: float = 0.4
    max_words: int = Field(110, ge=1)


class PersoConfig(PaperRecipeConfig):
    """``0.14*Coh + 0.20*C + 0.18*UE + 0.16*PD + 0.32*I`` (I: closeness to the pool's mean length
    plus a JSON bonus that, computed on extracted text as the authors did, never fires)."""

    weights: dict[str, float] = Field(default_factory=lambda: {
        "coh_unieval": 0.14, "c_score": 0.20, "ue_score": 0.18, "persona_distance": 0.16})
    instructability_weight: float = 0.32
    json_bonus: float = 0.3


class SimpleConfig(Section):
    """The paper's standard-DPO baseline: format-valid (chosen) x format-failed (rejected)."""

    include_unusable: bool = Field(
        True, description="failed outputs with no extractable reply are rejected too (their raw output)")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="None: the full cross product")
    seed: int = 0


class PersoDPORecipeConfig(Section):
    """Our recipe (the default). Content scores are normalised per prompt and weighted; format
    failures are separate ``pair_type=format`` pairs, never worst-case content scores."""

    # The default names columns the default score metrics write (persona similarity and coverage,
    # ROUGE-L against the gold reply), so a config-less run fits together; `persodpo check` tells
    # when a weighted column is written by nothing. AUTHORS_PERSODPO_WEIGHTS: the authors' data.
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PERSODPO_WEIGHTS))
    normalize: Literal["prompt-z", "prompt-minmax"] = Field(
        "prompt-z", description="prompt-z: centred per prompt, divided by the metric's pooled within-prompt "
                                "std (one scale for all prompts); prompt-minmax: min-max within each prompt")
    selection: Literal["best-worst", "best-random"] = Field(
        "best-random", description="chosen is the prompt's best; rejected the worst, or random lower ones")
    min_margin: float = Field(0.5, ge=0, description="minimum chosen-rejected score difference (normalised units)")
    max_pairs_per_prompt: int = Field(2, ge=1, description="content pairs per prompt (K)")
    format_pairs: bool = True
    format_pairs_per_prompt: int = Field(1, ge=1)
    balance_length: bool = Field(
        True, description="among eligible rejected, prefer the length relation each prompt is assigned "
                          "(half the prompts: chosen shorter, half: chosen longer)")
    prefer_same_family: bool = Field(False, description="among eligible rejected, prefer the chosen's generator family")
    max_chosen_family_share: float | None = Field(
        None, gt=0, le=1, description="drop the lowest-margin content pairs of a family whose share of chosen exceeds this")
    max_length_share: float | None = Field(
        None, ge=0.5, le=1, description="drop the lowest-margin content pairs of the more common length relation "
                                        "(chosen shorter / chosen longer) until its share is at most this")
    generator_families: dict[str, str] = Field(
        default_factory=dict, description="generator -> family; default: the generator name's leading letters")
    seed: int = 0
    on_policy: bool = Field(False, description="pairs among the policy's own samples only (iterative DPO: each "
                                               "prompt's best vs worst reply of `policy_generator`, normalised "
                                               "among them), mixed with off-policy pairs by off_policy_share")
    policy_generator: str = Field("policy", description="on_policy: the generator whose samples are the policy's")
    off_policy_share: float = Field(0.0, ge=0, lt=1, description="on_policy: this share of the content pairs comes "
                                                                 "from the other generators' candidates (0: none)")
    verify: Literal["none", "pairwise"] = Field(
        "none", description="pairwise: keep a content pair only when its chosen reply won both orders of every "
                            "pairwise judgment of the pair (score.panel.pairwise); the data card counts the dropped")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v)


class PairsConfig(Section):
    input: str | None = Field(None, description="the scores table URI")
    pairwise: str | None = Field(None, description="pairwise verdicts for pairs.persodpo.verify (default: "
                                                   "<input>/pairwise, what score.panel.pairwise writes)")
    candidates: str | None = None
    prompts: str | None = None
    output: str | None = None
    recipe: str = "persodpo"
    template: str | None = Field(
        None, description="prompt template of the pairs' prompt column (persodpo, simple); default: the "
                          "candidates' template. The paper recipes always use persobench-json-v1")
    word_limit: int = Field(110, ge=1, description="word limit written into the prompt (as the replies were asked)")
    # The format signal of `persodpo` and `simple` (the paper recipes use the parse status, as the authors did).
    format_column: str = Field(
        "format_ok", description="scores column with the format signal (bool, or a score >= format_threshold); "
                                 "when the scores table has no such column, candidates.parse_ok is the signal")
    format_threshold: float = 0.5
    rows_per_part: int = Field(50_000, ge=1)
    plots: bool = True
    html_max_pairs: int = Field(2000, ge=0, description="pairs.html (a pairs browser beside the data card) embeds at "
                                                        "most this many pairs, a deterministic sample; 0: no page")
    paper_length_prior: LengthPriorConfig = Field(default_factory=LengthPriorConfig)
    paper_perso: PersoConfig = Field(default_factory=PersoConfig)
    simple: SimpleConfig = Field(default_factory=SimpleConfig)
    persodpo: PersoDPORecipeConfig = Field(default_factory=PersoDPORecipeConfig)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str) -> str:
        if v not in RECIPE_NAMES:
            raise ValueError(f"unknown recipe {v!r}; known: {list(RECIPE_NAMES)}")
        return v
