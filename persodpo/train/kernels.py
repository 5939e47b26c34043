"""Which fused kernels a worker really uses: ``train.liger`` and ``train.attn_implementation``,
passed through where CUDA exists, dropped with a log line on CPU (pure, unit-tested).

TRL 1.16's DPOTrainer already computes log-probs in chunks through its fused LM head (the full
logits are never materialised), so ``use_liger_kernel`` applies Liger's layer kernels only
(RMSNorm, RoPE, SwiGLU); TRL itself turns Liger's fused linear cross-entropy off for DPO.
"""

from __future__ import annotations

from persodpo.errors import ConfigError

FLASH = ("flash_attention_2", "flash_attention_3")


def kernel_settings(*, liger: bool, attn_implementation: str | None, on_gpu: bool, have_liger: bool,
                    have_flash: bool) -> tuple[bool, str | None, list[str]]:
    """(use_liger_kernel, attn_implementation, notes to log). On CPU the CUDA-only choices fall
    back (Liger off, FlashAttention -> sdpa); on a GPU a requested kernel whose package is
    missing is an error naming the key, not a silent slowdown."""
    notes: list[str] = []
    use_liger, attn = liger, attn_implementation
    if not on_gpu:
        if liger:
            use_liger = False
            notes.append("train.liger=true ignored: Liger kernels are Triton/CUDA only and this worker has no GPU")
        if attn in FLASH:
            attn = "sdpa"
            notes.append(f"train.attn_implementation={attn_implementation} needs CUDA: using sdpa on CPU")
        return use_liger, attn, notes
    if liger and not have_liger:
        raise ConfigError("train.liger=true but the liger-kernel package is not installed on the GPU workers "
                          "(pip install liger-kernel)", key="train.liger")
    if attn in FLASH and not have_flash:
        raise ConfigError(f"train.attn_implementation={attn} but the flash-attn package is not installed on the "
                          "GPU workers (or choose sdpa)", key="train.attn_implementation")
    return use_liger, attn, notes


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
