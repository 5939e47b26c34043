"""TRL's DPOTrainer, configured from our config, with per-pair (margin) weights that really apply.

Where a per-pair weight can enter TRL 1.16: ``Trainer.compute_loss`` -> ``DPOTrainer.compute_loss``
-> ``DPOTrainer._compute_loss``, which computes every loss type in one body and offers exactly one
per-pair multiplier: with ``use_weighting`` (WPO) it multiplies each pair's loss by
``exp(mean_t(logp_t - log_sum_sq_probs_t))`` of the chosen times the same of the rejected
completion, where ``log_sum_sq_probs`` is a field of the policy forward's output, computed without
gradient. (The PersoDPO authors overrode ``dpo_loss``, a method TRL no longer calls, so their
weights never ran.) :class:`WeightedDPOTrainer` fills that field so the product is our weight:
``log_sum_sq_probs = logp - log(w)`` on the chosen rows and ``= logp`` on the rejected rows. The
loss value and the gradient are then those of ``mean_i(w_i * loss_i)``, for every separable loss
type (``aot`` sorts pairs across the batch and is refused by the config), and ``w = 1`` gives
TRL's loss bit for bit. ``tests/unit/test_train_weighting.py`` pins this against per-pair runs, so
a TRL upgrade that moves the hook fails loudly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from persodpo.train.data import WEIGHT
from persodpo.train.kernels import installed, kernel_settings
from persodpo.train.zero import zero_config

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from trl import DPOConfig

    from persodpo.train.config import TrainConfig


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """fp32, bf16 or fp16 for this hardware ("auto": bf16 on GPUs that support it, else fp32)."""
    if precision != "auto":
        if not on_gpu and precision == "fp16":
            raise ValueError("fp16 needs a GPU")
        return precision
    if on_gpu:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def dpo_args(c: "TrainConfig", *, output_dir: str, world_size: int, on_gpu: bool) -> "DPOConfig":
    """TRL's DPOConfig for one worker of a ``world_size``-worker run."""
    import torch
    from trl import DPOConfig

    if c.zero_stage == "auto":
        raise ValueError("train.zero_stage=auto must be resolved first (persodpo.train.worker.resolve_zero_stage)")
    if "auto" in (c.per_device_batch_size, c.gradient_checkpointing):
        raise ValueError("train.per_device_batch_size / gradient_checkpointing=auto must be resolved first "
                         "(persodpo.train.worker.resolve_batch)")
    precision = resolve_precision(c.precision, on_gpu)
    ds = None
    if c.zero_stage:
        ds = zero_config(c.zero_stage, micro_batch_size=c.per_device_batch_size,
                         grad_accum=c.gradient_accumulation_steps, world_size=world_size, precision=precision,
                         offload_optimizer=c.offload_optimizer, offload_params=c.offload_params,
                         grad_clip=c.max_grad_norm, on_gpu=on_gpu)
    use_liger, attn, notes = kernel_settings(
        liger=c.liger, attn_implementation=c.attn_implementation, on_gpu=on_gpu,
        have_liger=on_gpu and installed("liger_kernel"),
        have_flash=on_gpu and (c.attn_implementation != "flash_attention_2" or installed("flash_attn")))
    for note in notes:
        log.info("%s", note)
    # fp32 master weights; DeepSpeed (or autocast without it) computes in bf16/fp16.
    init_kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attn:
        init_kwargs["attn_implementation"] = attn
    return DPOConfig(
        output_dir=output_dir,
        # Without use_cpu on a CPU worker, accelerate under DeepSpeed does not pick up the process
        # group Ray Train built: workers silently train unsynchronised (DESIGN.md section 7).
        use_cpu=not on_gpu,
        deepspeed=ds,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        model_init_kwargs=init_kwargs,
        per_device_train_batch_size=c.per_device_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps,
        learning_rate=c.learning_rate,
        lr_scheduler_type=c.lr_scheduler_type,
        warmup_steps=c.warmup_ratio,
        weight_decay=c.weight_decay,
        max_grad_norm=c.max_grad_norm,
        optim=c.optim,
        num_train_epochs=c.num_epochs,
        max_steps=c.max_steps or -1,
        seed=c.seed,
        data_seed=c.shuffle_seed,
        gradient_checkpointing=c.gradient_checkpointing,
        beta=c.beta,
        loss_type=list(c.loss_type),
        loss_weights=list(c.loss_weights) if c.loss_weights else None,
        label_smoothing=c.label_smoothing,
        max_length=c.max_length,
        dataset_num_proc=c.dataset_num_proc,
        precompute_ref_log_probs=c.precompute_ref_log_probs,
        use_liger_kernel=use_liger,
        report_to=list(c.report_to) or "none",
        logging_steps=c.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=c.save_steps,
        # Ray Train keeps the uploaded checkpoints; locally only the newest is needed.
        save_total_limit=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def lora_config(c: "TrainConfig"):
    if not c.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout,
                      target_modules=c.lora.target_modules, task_type="CAUSAL_LM")


class _PairWeightedOutputs:
    """Calls the policy model and sets ``log_sum_sq_probs`` so TRL's WPO factor equals ``weight``."""

    def __init__(self, model, weight):
        self._model, self._weight = model, weight

    def __call__(self, *args, **kwargs):
        import torch

        out = self._model(*args, **kwargs)
        log_probs = getattr(out, "log_probs", None)
        if log_probs is None:       # the plain forward TRL makes only for return_outputs logits
            return out
        log_w = torch.log(self._weight.to(device=log_probs.device, dtype=log_probs.dtype))
        # Batch rows are [chosen..., rejected...]; the factor is exp(mean over completion tokens
        # of (logp - field)), so subtracting log(w) on the chosen rows gives w, and 0 gives 1.
        shift = torch.cat([log_w, torch.zeros_like(log_w)])[:, None]
        out.log_sum_sq_probs = log_probs.detach() - shift
        return out


def _collate_with_weights(collator):
    def collate(examples: list[dict]) -> dict:
        import torch

        batch = collator(examples)
        if examples and WEIGHT in examples[0]:
            batch[WEIGHT] = torch.tensor([float(e[WEIGHT]) for e in examples], dtype=torch.float64)
        return batch
    return collate


def trainer_class(*, weighted: bool = False, group_by_length: bool = False):
    """TRL's DPOTrainer plus what persodpo adds: ``pad_share`` in every logged row (the share of
    padded positions in the step's batches, all ranks), length-grouped batches when
    ``group_by_length`` (persodpo.train.batching; not transformers' ``train_sampling_strategy``,
    which cannot read TRL's columns), and per-pair weights when ``weighted``."""
    from trl import DPOTrainer

    group_by_length_ = group_by_length

    class PersoDPOTrainer(DPOTrainer):
        _pair_sampler = None
        group_by_length = group_by_length_

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            from persodpo.train.batching import LengthGroupedPairSampler, pair_lengths

            ds = self.train_dataset if train_dataset is None else train_dataset
            chosen, rejected = pair_lengths(ds.with_format("arrow")[:], self.args.max_length)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._pair_sampler = LengthGroupedPairSampler(
                [max(a, b) for a, b in zip(chosen, rejected)],
                batch_size=self.args.per_device_train_batch_size * max(self.args.world_size, 1), seed=seed)
            return self._pair_sampler

        def _run_epoch(self, *args, **kwargs):
            # The epoch reaches the sampler here on every path, resumed mid-epoch on several ranks
            # included (accelerate's set_epoch stops at its skip/shard wrappers there).
            if self._pair_sampler is not None:
                self._pair_sampler.set_epoch(kwargs["epoch"])
            return super()._run_epoch(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            if mask is not None and self.model.training:
                import torch

                # [padded, all] positions of this micro-batch, summed over ranks (a collective that
                # every rank reaches once per micro-batch, like TRL's own token counts).
                counts = torch.tensor([mask.numel() - int(mask.sum()), mask.numel()], dtype=torch.float64,
                                      device=mask.device)
                counts = self.accelerator.gather(counts).reshape(-1, 2).sum(0)
                self._metrics["train"]["pad_share"].append(float(counts[0] / counts[1]) if counts[1] else 0.0)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    if not weighted:
        return PersoDPOTrainer

    class WeightedDPOTrainer(PersoDPOTrainer):
        def __init__(self, *args, **kwargs):
            args_ = kwargs.get("args")
            if args_ is not None and args_.use_weighting:
                raise ValueError("per-pair weights use TRL's WPO hook: they cannot be combined with use_weighting")
            super().__init__(*args, **kwargs)
            self.data_collator = _collate_with_weights(self.data_collator)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if WEIGHT not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, WEIGHT]

        def _compute_loss(self, model, inputs, return_outputs):
            weight = inputs.pop(WEIGHT, None)
            if weight is None:
                return super()._compute_loss(model, inputs, return_outputs)
            self.use_weighting = True
            try:
                return super()._compute_loss(_PairWeightedOutputs(model, weight), inputs, return_outputs)
            finally:
                self.use_weighting = False

    return WeightedDPOTrainer


def weighted_trainer_class():
    """DPOTrainer subclass reading per-pair weights from the dataset column ``pair_weight``."""
    return trainer_class(weighted=True)
