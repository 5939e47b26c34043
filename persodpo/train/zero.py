"""DeepSpeed ZeRO configuration as a pure function of a few arguments (OpenRLHF style).

The dict goes to ``DPOConfig(deepspeed=...)``; transformers checks every concrete value against
the trainer arguments, so batch sizes and precision here must come from the same config (they
do: :func:`persodpo.train.dpo.dpo_args` calls this). The ``"auto"`` bucket sizes are filled by
transformers from the model's hidden size.
"""

from __future__ import annotations

import functools
from typing import Any


def zero_config(stage: int, *, micro_batch_size: int, grad_accum: int, world_size: int,
                precision: str = "fp32", offload_optimizer: bool = False, offload_params: bool = False,
                grad_clip: float = 1.0, on_gpu: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for ZeRO ``stage`` (1, 2 or 3)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"ZeRO stage must be 1, 2 or 3, not {stage!r}")
    if offload_params and stage != 3:
        raise ValueError("parameter offload needs ZeRO-3")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    if min(micro_batch_size, grad_accum, world_size) < 1:
        raise ValueError("batch size, gradient accumulation and world size must be >= 1")

    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        # Overlapping communication with the backward pass needs CUDA streams; on CPU/gloo it only
        # adds buffers.
        "overlap_comm": on_gpu,
        "reduce_bucket_size": "auto",
    }
    if stage >= 2:
        zero.update(allgather_partitions=True, reduce_scatter=True, allgather_bucket_size=int(5e8))
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=int(1e9),
            stage3_max_reuse_distance=int(1e9),
            # save_model() then gathers the full weights on rank 0 and writes plain safetensors.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    # pinned host memory speeds up host<->GPU copies; without a GPU there is nothing to pin for.
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}

    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        # The optimizer is transformers' AdamW (from the trainer arguments). With offload DeepSpeed
        # would insist on its own CPUAdam, a C++ op compiled at first use; torch's AdamW on the
        # offloaded fp32 partition is slower per step but needs no compiler on the workers.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# -- train.zero_stage: auto --------------------------------------------------------------------
GiB = 1024 ** 3
# Share of a device's memory that model states (weights, gradients, optimizer, reference) may take;
# the rest is for activations, the logits (vocabulary x tokens, fp32 in TRL's log-prob path), the
# CUDA context and allocator fragmentation.
STATE_BUDGET = 0.6


def state_bytes(stage: int, *, n_params: int, trainable: int, world_size: int, precision: str,
                ref_copy: bool, offload_optimizer: bool = False, offload_params: bool = False) -> float:
    """Estimated bytes of model states per device under ``stage`` (the ZeRO paper's accounting).

    Adam keeps fp32 moments (8 bytes per trainable parameter). Under DeepSpeed with bf16/fp16 the
    weights and gradients are 16-bit plus an fp32 master copy (4 bytes); stage 0 is plain DDP with
    fp32 weights and autocast (4-byte weights and gradients, the weights are the master copy).
    ZeRO-1 shards the optimizer, ZeRO-2 also the gradients, ZeRO-3 also the weights. The reference
    model (``ref_copy``: not LoRA, not precomputed) is a frozen copy in the compute precision,
    sharded like the weights.
    """
    n, t, w = float(n_params), float(trainable), max(world_size, 1)
    half = precision in ("bf16", "fp16") and stage > 0
    wb = 2.0 if half else 4.0                       # bytes per weight (and per gradient)
    master = 4.0 if half else 0.0
    optim = 0.0 if offload_optimizer else (8.0 + master) * t
    weights = 0.0 if offload_params else wb * n
    ref = wb * n if ref_copy and not offload_params else 0.0
    grads = wb * t
    if stage >= 1:
        optim /= w
    if stage >= 2:
        grads /= w
    if stage >= 3:
        weights /= w
        ref /= w
    return weights + grads + optim + ref


def choose_zero_stage(*, n_params: int, trainable: int, world_size: int, device_bytes: float, on_gpu: bool,
                      precision: str, grad_accum: int, ref_copy: bool, offload_optimizer: bool = False,
                      offload_params: bool = False, budget: float = STATE_BUDGET) -> tuple[int, str]:
    """The ZeRO stage for ``train.zero_stage: auto`` and the reason, as a sentence.

    The cheapest stage whose model states fit ``budget`` x ``device_bytes`` (the smallest device
    of the run), in order of communication cost: 0 (plain DDP, one all-reduce per optimizer step),
    1 (optimizer sharded; gradients are still reduced once per step), 2 (gradients sharded too,
    but DeepSpeed then reduce-scatters at every micro-step: with gradient accumulation 1 it costs
    what ZeRO-1 costs and saves memory, so 1 is skipped), 3 (weights sharded: parameter
    all-gathers in every forward and backward, the slowest on one node below a few billion
    parameters). One worker shards nothing: 0, else 2 (16-bit weights, or offload). On CPU only
    the paths verified here (DESIGN.md section 7: 0 with one worker, 2 and 3 over gloo) are chosen.
    Nothing fits: the stage with the smallest estimate, and the reason says so.
    """
    if offload_params:
        return 3, "train.offload_params needs ZeRO-3"
    if world_size == 1:
        order = [0, 2]          # nothing to shard; DeepSpeed's 16-bit weights are still a bit smaller
    elif on_gpu:
        order = [0, 1, 2, 3] if grad_accum > 1 else [0, 2, 3]
    else:
        order = [2, 3]
    if offload_optimizer:
        # ZeRO-Offload is DeepSpeed's; the well-trodden path is stage 2 (stage 1 shares its code).
        order = [s for s in order if s >= 2]
    limit = budget * device_bytes
    est = {s: state_bytes(s, n_params=n_params, trainable=trainable, world_size=world_size, precision=precision,
                          ref_copy=ref_copy, offload_optimizer=offload_optimizer) for s in order}
    where = f"{'GPU' if on_gpu else 'host'} memory {device_bytes / GiB:.1f} GiB per worker"
    size = f"{n_params / 1e9:.3g}B parameters ({trainable / 1e9:.3g}B trainable), {world_size} worker(s)"
    for s in order:
        if est[s] <= limit:
            why = f"model states ~{est[s] / GiB:.1f} GiB fit {budget:.0%} of {where}"
            if s == order[0]:
                return s, f"ZeRO-{s}: cheapest communication; {why}; {size}"
            skipped = ", ".join(f"ZeRO-{k} ~{est[k] / GiB:.1f} GiB" for k in order[:order.index(s)])
            return s, f"ZeRO-{s}: {why} ({skipped} do not); {size}"
    s = min(order, key=lambda k: (est[k], k))
    return s, (f"ZeRO-{s}: smallest estimate ~{est[s] / GiB:.1f} GiB, still over {budget:.0%} of {where}; "
               f"{size}: expect out-of-memory (use LoRA, offload or more workers)")


@functools.lru_cache(maxsize=4)   # the ZeRO stage and the micro-batch choices both ask, on every worker
def model_parameters(model_path: str, lora: bool) -> tuple[int, int]:
    """(parameters, trainable parameters) of the model ``train`` would fine-tune (LoRA: about 1%)."""
    return count_parameters(model_path, lora_trainable=0.01 if lora else None)


def count_parameters(model_path: str, *, lora_trainable: float | None = None) -> tuple[int, int]:
    """(parameters, trainable parameters) of a causal LM from its config alone (meta device:
    nothing is allocated or downloaded beyond config.json). With LoRA the trainable share is a
    rough ``lora_trainable`` (the adapter's size is small next to the base either way)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    return n, n if lora_trainable is None else int(n * lora_trainable)
