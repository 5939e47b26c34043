"""DPO training's compute before it runs (``persodpo plan``): FLOPs from the model's size and the
tokens it trains on, GPU-hours over an accelerator's dense peak at an assumed model FLOPs
utilisation (MFU). Pure arithmetic, next to the memory estimate (:mod:`persodpo.train.memory`).

Per token (Kaplan et al. 2020; Chowdhery et al. 2022, appendix B): the weights' matrix products
take ``2N`` FLOPs forward for ``N`` parameters and ``4N`` backward (``2N`` with LoRA: frozen
weights need no weight gradients, only the activations' gradients); causal attention adds
``2 x layers x seq_len x hidden`` forward (scores and weighted sum over on average half the
sequence) and twice that backward. DPO runs the policy forward and backward on the chosen and the
rejected sequence of every pair, and the reference forward on both: every epoch, or once in all
with ``precompute_ref_log_probs``.
"""

from __future__ import annotations

from persodpo.train.memory import ModelShape

# Dense (no sparsity) bf16 tensor peaks in TFLOP/s from the vendors' datasheets (fp16 for V100 and
# T4, which have no bf16), keyed by Ray's accelerator type names.
PEAK_TFLOPS = {"B200": 2250.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "V100": 125.0, "T4": 65.0}
# An assumption, not yet measured by us (bench/train_gpu.sh prints the real MFU on a GPU): TRL and
# DeepSpeed on one node reach about 0.3-0.45 on models of 1-10B parameters, less on small ones.
DEFAULT_MFU = 0.3


def dpo_flops(*, n_params: int, trainable: int, shape: ModelShape, tokens: float, seq_len: float,
              epochs: float, precompute_ref: bool = False) -> float:
    """FLOPs of DPO training on ``tokens`` tokens per epoch (chosen and rejected sequences with their
    prompt, ``seq_len`` tokens long on average) for ``epochs`` epochs."""
    backward = 4.0 if trainable >= n_params / 2 else 2.0     # full fine-tuning vs adapters
    attention = 2.0 * shape.layers * seq_len * shape.hidden   # forward, per token
    policy = ((2.0 + backward) * n_params + 3.0 * attention) * tokens * epochs
    reference = (2.0 * n_params + attention) * tokens * (1.0 if precompute_ref else epochs)
    return policy + reference


def peak_flops(accelerator: str) -> float | None:
    """Dense bf16 peak of one device in FLOP/s, or None for an accelerator not in the table."""
    name = accelerator.strip().upper().removeprefix("ACCELERATOR_TYPE:").removeprefix("NVIDIA_")
    t = PEAK_TFLOPS.get(name)
    return None if t is None else t * 1e12


def gpu_hours(flops: float, accelerator: str, mfu: float = DEFAULT_MFU) -> float | None:
    """Device-hours of ``flops`` at ``mfu`` of the accelerator's peak (None: not in the table)."""
    peak = peak_flops(accelerator)
    return None if peak is None else flops / (peak * mfu) / 3600.0
