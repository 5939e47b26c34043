"""Configuration of DPO training (TRL + DeepSpeed ZeRO under Ray Train).

Every default runs offline on one machine (the packaged SmolLM2-135M-Instruct, CPU, 2 workers);
production configs name a hub model, GPUs and a larger batch. Field names follow TRL's
``DPOConfig`` where one exists, so the mapping in :mod:`persodpo.train.dpo` stays obvious.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from persodpo.sections import Section

# Loss types of TRL 1.16's DPOTrainer (trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# aot/aot_unpaired sort the pairs of a batch, so a per-pair weight would land on the wrong pair.
UNWEIGHTABLE = ("aot", "aot_unpaired")


class LoraSection(Section):
    """LoRA (peft). The reference model is then the base with the adapter disabled (no copy)."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge: bool = Field(True, description="write the merged full model (and the adapter under adapter/)")


class TrainConfig(Section):
    input: str | None = Field(None, description="pairs URI (a complete pairs stage output)")
    output: str | None = Field(None, description="model + checkpoints URI (local or s3://)")

    # -- model ---------------------------------------------------------------------------------
    model: str = Field("packaged:smollm2-135m-instruct",
                       description="hub id, local dir, packaged:smollm2-135m-instruct or tiny:<arch> (persodpo.models)")
    ref_model: str | None = Field(None, description="DPO reference model (same sources as model); null: the model "
                                                    "training starts from. Iterative rounds set it for "
                                                    "rounds.reference: original")
    lora: LoraSection = Field(default_factory=LoraSection)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False, description="auto: on only when one pair does not fit the device without it "
                           "(persodpo.train.memory.choose_micro_batch)")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None: transformers' "
                                                              "default; FlashAttention falls back to sdpa on CPU")
    liger: bool = Field(False, description="Liger's fused layer kernels through TRL (GPU only; ignored with a "
                                           "log line on CPU; an error on a GPU without liger-kernel)")

    # -- data ------------------------------------------------------------------------------------
    pair_types: list[Literal["content", "format"]] = Field(
        default_factory=lambda: ["content", "format"], description="which pair types to train on")
    max_length: int | None = Field(1024, ge=8, description="prompt + completion tokens; longer pairs are truncated")
    shuffle_seed: int = 42
    group_by_length: bool = Field(True, description="batches of similar length (less padding); every pair once "
                                                    "per epoch, the order fixed by shuffle_seed + epoch "
                                                    "(persodpo.train.batching)")
    dataset_num_proc: int | None = Field(None, ge=1, description="processes per worker for TRL's tokenization "
                                                                 "(every worker tokenizes every pair)")

    # -- DPO -----------------------------------------------------------------------------------
    beta: float = Field(0.1, gt=0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    precompute_ref_log_probs: bool = Field(False, description="one reference pass before training; no ref model in memory")
    margin_weighting: Literal["none", "linear", "sigmoid"] = Field(
        "none", description="weight each pair's loss by its score margin (see persodpo.train.weighting)")
    margin_scale: float = Field(1.0, gt=0, description="sigmoid: w = sigmoid(margin / scale), then mean-normalised")
    margin_weight_min: float = Field(0.1, ge=0)
    margin_weight_max: float = Field(10.0, gt=0)

    # -- optimisation ----------------------------------------------------------------------------
    learning_rate: float = Field(1e-6, gt=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                               "polynomial", "inverse_sqrt"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps with a linear warm-up")
    weight_decay: float = Field(0.0, ge=0)
    optim: str = Field("adamw_torch", description="transformers optimizer name")
    max_grad_norm: float = Field(1.0, ge=0)
    per_device_batch_size: int | Literal["auto"] = Field(
        4, description="pairs per worker per micro-step; auto: the largest divisor of pairs_per_worker_step whose "
                       "activations fit the device beside the model states (persodpo.train.memory), with "
                       "gradient_accumulation_steps = pairs_per_worker_step / it")
    gradient_accumulation_steps: int = Field(4, ge=1, description="ignored with per_device_batch_size: auto")
    pairs_per_worker_step: int = Field(16, ge=1, description="per_device_batch_size: auto only: pairs per worker "
                                                             "per optimizer step (micro-batch x accumulation)")
    num_epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides num_epochs")
    seed: int = 42

    # -- DeepSpeed -------------------------------------------------------------------------------
    zero_stage: Literal[0, 1, 2, 3, "auto"] = Field(
        2, description="0: no DeepSpeed (plain DDP); auto: from model size, device memory and workers "
                       "(persodpo.train.zero.choose_zero_stage), recorded as zero_stage/zero_stage_reason")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer states in CPU memory")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters in CPU memory")

    # -- Ray Train -------------------------------------------------------------------------------
    num_workers: int = Field(2, ge=1)
    use_gpu: bool | None = Field(None, description="None: use GPUs when the Ray cluster has any, or its autoscaler "
                                                   "can add GPU node types (persodpo.feasibility)")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="default {CPU: 1} (+ {GPU: 1} with use_gpu); on clusters that reserve training nodes "
                          "with a custom resource, ask for it, e.g. {CPU: 8, GPU: 1, train: 1}")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the latest checkpoint (-1: forever)")
    run_name: str | None = Field(None, description="Ray Train run name; default dpo-<hash of this section>. "
                                                   "A restarted run with the same name resumes from its checkpoint")
    resume: bool = Field(True, description="False: discard this run name's checkpoints and start over")
    save_steps: int = Field(50, ge=1, description="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1, description="metrics.jsonl / report_to integrations every N steps")
    ray_report_steps: int = Field(0, ge=0, description="also ray.train.report metrics every N steps (0: only with "
                                                       "checkpoints); each report can stall a worker up to 2 s")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"],
                                 description="transformers integrations: tensorboard, wandb, mlflow, none")
    sync_check: bool = Field(True, description="compare parameter digests across ranks after the first step and "
                                               "at the end (ZeRO 0-2); a mismatch fails the run")
    local_dir: str | None = Field(None, description="worker scratch dir (same path on every worker); default tmp")

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in LOSS_TYPES]
        if bad or not v:
            raise ValueError(f"unknown loss type(s) {bad}; known: {list(LOSS_TYPES)}")
        return v

    @field_validator("per_device_batch_size")
    @classmethod
    def _positive_batch(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError("must be >= 1 or auto")
        return v

    @field_validator("report_to")
    @classmethod
    def _report_none(cls, v: list[str]) -> list[str]:
        return [] if v in (["none"], ["None"]) else v

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} loss types")
        if self.margin_weighting != "none" and any(t in UNWEIGHTABLE for t in self.loss_type):
            raise ValueError(f"margin_weighting cannot be combined with loss types {list(UNWEIGHTABLE)} "
                             "(they sort the pairs of a batch)")
        if self.margin_weight_min > self.margin_weight_max:
            raise ValueError("margin_weight_min is larger than margin_weight_max")
        if self.ref_model is not None and self.lora.enabled:
            raise ValueError("ref_model cannot be combined with lora.enabled (LoRA's reference is the base model "
                             "with the adapter disabled)")
        if self.offload_params and self.zero_stage not in (3, "auto"):
            raise ValueError("offload_params needs zero_stage=3")
        if (self.offload_optimizer or self.offload_params) and self.zero_stage == 0:
            raise ValueError("CPU offload needs DeepSpeed (zero_stage 1-3)")
        if self.run_name is not None and not self.run_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError("run_name may hold letters, digits, '-', '_' and '.' only")
        return self
