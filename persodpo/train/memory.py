"""``train.per_device_batch_size: auto`` and ``train.gradient_checkpointing: auto``: the micro-batch
from an estimate of the activation memory, as a pure function (like the ZeRO stage next door in
:mod:`persodpo.train.zero`), so it is unit-tested on CPU and every rank computes the same answer.

What a DPO micro-batch of ``b`` pairs holds at its peak (TRL 1.16 concatenates chosen and rejected,
so ``2b`` sequences padded to at most ``max_length``):

- the decoder body's saved activations: per token and layer about ``6h + 3i`` elements in the
  compute precision (attention inputs, q/k/v and output with fused attention, i.e. no
  ``seq x seq`` scores; the gated MLP's three ``i``-wide tensors). Korthikanti et al. (2022) count
  ``34h`` bytes at 16 bits for a ``4h`` MLP, which this matches within 20%. With gradient
  checkpointing only each layer's input (``h``) is kept, plus one layer recomputed at a time;
- the logits: ``vocab`` per token in the compute precision, then fp32 log-probabilities and their
  gradient (``vocab x (p + 8)`` bytes per token). With a 150k vocabulary this is the larger term
  for models below a few billion parameters, and checkpointing does not shrink it.

The model states (weights, gradients, optimizer, reference) come from
:func:`persodpo.train.zero.state_bytes` for the stage already chosen; what is left of ``headroom``
of the device, less a fixed reserve (CUDA context, allocator fragmentation), is for activations.
The estimate is an upper bound: sequences are rarely all ``max_length`` long. The train summary
records it beside the measured peak (``peak_device_bytes`` on GPUs) so it can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
HEADROOM = 0.9
RESERVE_GPU = 1.5 * GiB     # CUDA context, NCCL buffers, allocator fragmentation
RESERVE_CPU = 1.0 * GiB     # interpreter, tokenizer, Arrow tables of the pairs


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int


def model_shape(model_path: str) -> ModelShape:
    """The decoder's shape from its config.json alone (nothing loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    return ModelShape(layers=int(text.num_hidden_layers), hidden=hidden,
                      intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden),
                      vocab=int(text.vocab_size))


def activation_bytes_per_pair(shape: ModelShape, *, seq_len: int, precision: str, checkpointing: bool) -> float:
    """Peak activation bytes of one pair (two sequences of ``seq_len`` tokens) in a training step."""
    p = 2.0 if precision in ("bf16", "fp16") else 4.0
    per_layer = (6 * shape.hidden + 3 * shape.intermediate) * p
    if checkpointing:
        body = shape.layers * shape.hidden * p + per_layer
    else:
        body = shape.layers * per_layer
    logits = shape.vocab * (p + 8.0)
    return 2.0 * seq_len * (body + logits)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_micro_batch(*, shape: ModelShape, seq_len: int, device_bytes: float, states_bytes: float,
                       precision: str, pairs_per_step: int, on_gpu: bool,
                       checkpointing: bool | str = "auto", micro_batch: int | None = None,
                       headroom: float = HEADROOM) -> dict:
    """The largest micro-batch ``b`` dividing ``pairs_per_step`` whose activations fit beside the
    model states, its gradient accumulation (``pairs_per_step / b``: the optimizer step keeps its
    size whatever the device) and whether gradient checkpointing is on. ``checkpointing="auto"``
    turns it on only when one pair does not fit without it (it costs a second forward pass).
    ``micro_batch`` fixes the micro-batch (only checkpointing is chosen). Returns ``per_device_batch_size``, ``gradient_accumulation_steps``, ``gradient_checkpointing``,
    ``activation_bytes`` (estimate at that batch), ``memory_estimate_bytes`` (states + activations)
    and ``batch_reason`` (a sentence)."""
    if pairs_per_step < 1 or seq_len < 1:
        raise ValueError("pairs_per_step and seq_len must be >= 1")
    if micro_batch is not None and pairs_per_step % micro_batch:
        raise ValueError(f"micro_batch {micro_batch} does not divide pairs_per_step {pairs_per_step}")
    sizes = [micro_batch] if micro_batch is not None else divisors(pairs_per_step)
    free = headroom * device_bytes - states_bytes - (RESERVE_GPU if on_gpu else RESERVE_CPU)
    where = f"{'GPU' if on_gpu else 'host'} memory {device_bytes / GiB:.1f} GiB per worker"
    options = [False, True] if checkpointing == "auto" else [bool(checkpointing)]

    def fits(ckpt: bool) -> tuple[int | None, float]:
        per_pair = activation_bytes_per_pair(shape, seq_len=seq_len, precision=precision, checkpointing=ckpt)
        best = max((b for b in sizes if b * per_pair <= free), default=None)
        return best, per_pair

    for ckpt in options:
        b, per_pair = fits(ckpt)
        if b is not None:
            why = (f"micro-batch {b} x accumulation {pairs_per_step // b} = {pairs_per_step} pairs per step: "
                   f"~{b * per_pair / GiB:.1f} GiB of activations ({seq_len} tokens, "
                   f"{'with' if ckpt else 'without'} gradient checkpointing) + ~{states_bytes / GiB:.1f} GiB of "
                   f"model states fit {headroom:.0%} of {where}")
            if ckpt and checkpointing == "auto":
                why += (f"; checkpointing is on because {'one pair' if micro_batch is None else f'{b} pair(s)'} "
                        "does not fit without it")
            return _result(b, pairs_per_step, ckpt, per_pair, states_bytes, why)
    ckpt, b = options[-1], min(sizes)
    _, per_pair = fits(ckpt)
    why = (f"micro-batch {b} x accumulation {pairs_per_step // b}: {b} pair(s) (~{b * per_pair / GiB:.1f} GiB "
           f"of activations at {seq_len} tokens) + ~{states_bytes / GiB:.1f} GiB of model states is over "
           f"{headroom:.0%} of {where}: expect out-of-memory (lower train.max_length, use LoRA, a higher ZeRO "
           "stage or offload)")
    return _result(b, pairs_per_step, ckpt, per_pair, states_bytes, why)


def _result(b: int, pairs_per_step: int, ckpt: bool, per_pair: float, states: float, why: str) -> dict:
    return {"per_device_batch_size": b, "gradient_accumulation_steps": pairs_per_step // b,
            "gradient_checkpointing": ckpt, "activation_bytes": int(b * per_pair),
            "memory_estimate_bytes": int(b * per_pair + states), "batch_reason": why}
