"""DeepSpeed ZeRO configuration as a pure function of a few arguments (OpenRLHF style).

The dict goes to ``DPOConfig(deepspeed=...)``; transformers checks every concrete value against
the trainer arguments, so batch sizes and precision here must come from the same config (they
do: :func:`persodpo.train.dpo.dpo_args` calls this). The ``"auto"`` bucket sizes are filled by
transformers from the model's hidden size.
"""

from __future__ import annotations

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
