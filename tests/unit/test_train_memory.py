"""train.per_device_batch_size: auto and gradient_checkpointing: auto (persodpo.train.memory):
the micro-batch from an activation estimate, pure arithmetic, no GPU needed."""

from __future__ import annotations

import pytest

from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.train.memory import ModelShape, activation_bytes_per_pair, choose_micro_batch, model_shape
from persodpo.train.zero import GiB, state_bytes

QWEN2_05B = ModelShape(layers=24, hidden=896, intermediate=4864, vocab=151936)
LLAMA_7B = ModelShape(layers=32, hidden=4096, intermediate=11008, vocab=32000)
H100 = 79.6 * GiB


def _choose(shape, n, *, stage=0, world=1, mem=H100, seq=1024, pairs=16, gpu=True, ckpt="auto"):
    precision = "bf16" if gpu else "fp32"
    states = state_bytes(stage, n_params=int(n), trainable=int(n), world_size=world, precision=precision,
                         ref_copy=True)
    return choose_micro_batch(shape=shape, seq_len=seq, device_bytes=mem, states_bytes=states, precision=precision,
                              pairs_per_step=pairs, on_gpu=gpu, checkpointing=ckpt)


def test_activations_match_the_published_count_and_the_logits_dominate_small_models():
    # A 4h MLP: (6h + 12h) elements x 2 bytes = 36h bytes per token and layer (Korthikanti et al.: 34h).
    s = ModelShape(layers=1, hidden=1000, intermediate=4000, vocab=1)
    body = activation_bytes_per_pair(s, seq_len=1, precision="bf16", checkpointing=False) / 2 - 1 * (2 + 8)
    assert body == 36 * 1000
    # Qwen2-0.5B at 1,024 tokens: the 152k-vocabulary logits outweigh the 24 layers.
    per_token_logits = QWEN2_05B.vocab * 10
    full = activation_bytes_per_pair(QWEN2_05B, seq_len=1024, precision="bf16", checkpointing=False)
    assert per_token_logits * 2 * 1024 > full / 2
    # Linear in the length; checkpointing shrinks the body only; fp32 costs more than bf16.
    assert activation_bytes_per_pair(QWEN2_05B, seq_len=2048, precision="bf16", checkpointing=False) == 2 * full
    ckpt = activation_bytes_per_pair(QWEN2_05B, seq_len=1024, precision="bf16", checkpointing=True)
    assert per_token_logits * 2 * 1024 < ckpt < full
    assert activation_bytes_per_pair(QWEN2_05B, seq_len=1024, precision="fp32", checkpointing=False) > full


def test_a_small_model_on_an_h100_gets_the_batch_of_the_gpu_benchmark():
    got = _choose(QWEN2_05B, 494e6)
    assert (got["per_device_batch_size"], got["gradient_accumulation_steps"], got["gradient_checkpointing"]) == (8, 2, False)
    assert got["memory_estimate_bytes"] <= 0.9 * H100
    assert got["batch_reason"].startswith("micro-batch 8 x accumulation 2 = 16 pairs per step")
    assert "GPU memory 79.6 GiB" in got["batch_reason"]


def test_the_optimizer_step_keeps_its_size_whatever_the_device():
    for mem in (16 * GiB, 24 * GiB, 40 * GiB, 80 * GiB, 141 * GiB):
        for pairs in (12, 16, 32):
            got = _choose(QWEN2_05B, 494e6, mem=mem, pairs=pairs)
            assert got["per_device_batch_size"] * got["gradient_accumulation_steps"] == pairs
            assert pairs % got["per_device_batch_size"] == 0
    # More memory never means a smaller micro-batch.
    sizes = [_choose(QWEN2_05B, 494e6, mem=m * GiB)["per_device_batch_size"] for m in (16, 24, 40, 80, 141)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_checkpointing_only_when_one_pair_does_not_fit_without_it():
    # 7B under ZeRO-3 on 8 GPUs: 2 pairs of 2,048 tokens fit an 80 GiB card without checkpointing.
    assert _choose(LLAMA_7B, 6.7e9, stage=3, world=8, seq=2048)["gradient_checkpointing"] is False
    # On 24 GiB cards at 4,096 tokens one pair does not: checkpointing goes on, micro-batch 1.
    got = _choose(LLAMA_7B, 6.7e9, stage=3, world=8, seq=4096, mem=24 * GiB)
    assert (got["per_device_batch_size"], got["gradient_checkpointing"]) == (1, True)
    assert "checkpointing is on because one pair does not fit" in got["batch_reason"]
    # Forced off, the same case says it will not fit.
    off = _choose(LLAMA_7B, 6.7e9, stage=3, world=8, seq=4096, mem=24 * GiB, ckpt=False)
    assert off["per_device_batch_size"] == 1 and off["gradient_checkpointing"] is False
    assert "expect out-of-memory" in off["batch_reason"]


def test_the_decoder_shape_comes_from_the_config_alone():
    from persodpo.models import resolve_model

    shape = model_shape(resolve_model("tiny:llama"))
    assert shape.layers >= 1 and shape.hidden >= 8 and shape.intermediate >= shape.hidden and shape.vocab > 100


def test_auto_in_the_config_and_its_resolution():
    c = load_config(None, ["train.per_device_batch_size=auto", "train.gradient_checkpointing=auto",
                           "train.pairs_per_worker_step=8", "train.model=tiny:llama"]).train
    assert c.per_device_batch_size == "auto" and c.gradient_checkpointing == "auto"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.per_device_batch_size=0"])
    assert "train.per_device_batch_size" in str(e.value)

    from persodpo.models import resolve_model
    from persodpo.train.dpo import dpo_args
    from persodpo.train.worker import resolve_batch

    with pytest.raises(ValueError, match="resolved first"):
        dpo_args(c.model_copy(update={"zero_stage": 2}), output_dir="/tmp/x", world_size=1, on_gpu=False)
    path = resolve_model(c.model)
    c = c.model_copy(update={"zero_stage": 2})
    got = resolve_batch(c, model_path=path, world=2, on_gpu=False, local_rank=0, local_world=2, resumed=None)
    # A tiny model in host memory: the whole step in one micro-batch, no checkpointing.
    assert (got["per_device_batch_size"], got["gradient_accumulation_steps"], got["gradient_checkpointing"]) == (8, 1, False)
    assert "host memory" in got["batch_reason"]
    # A resumed run keeps the batch its checkpoint was written with.
    kept = {"per_device_batch_size": 2, "gradient_accumulation_steps": 4, "gradient_checkpointing": True}
    again = resolve_batch(c, model_path=path, world=2, on_gpu=False, local_rank=0, local_world=2, resumed=kept)
    assert {k: again[k] for k in kept} == kept and "resumed checkpoint" in again["batch_reason"]
    # Fixed settings pass through untouched.
    fixed = c.model_copy(update={"per_device_batch_size": 3, "gradient_checkpointing": False})
    assert resolve_batch(fixed, model_path=path, world=2, on_gpu=False, local_rank=0, local_world=2,
                         resumed=kept)["per_device_batch_size"] == 3
    # Only checkpointing auto: the configured batch stays.
    only = c.model_copy(update={"per_device_batch_size": 3})
    got = resolve_batch(only, model_path=path, world=2, on_gpu=False, local_rank=0, local_world=2, resumed=None)
    assert (got["per_device_batch_size"], got["gradient_accumulation_steps"], got["gradient_checkpointing"]) == (
        3, c.gradient_accumulation_steps, False)


def test_a_fixed_micro_batch_only_chooses_checkpointing():
    # 8 pairs of Qwen2-0.5B at 1,024 tokens do not fit 24 GiB without checkpointing, 1 would.
    got = _choose(QWEN2_05B, 494e6, mem=24 * GiB, pairs=16)
    assert got["per_device_batch_size"] < 8
    states = state_bytes(0, n_params=494_000_000, trainable=494_000_000, world_size=1, precision="bf16",
                         ref_copy=True)
    fixed = choose_micro_batch(shape=QWEN2_05B, seq_len=1024, device_bytes=24 * GiB, states_bytes=states,
                               precision="bf16", pairs_per_step=16, on_gpu=True, micro_batch=8)
    assert fixed["per_device_batch_size"] == 8 and fixed["gradient_accumulation_steps"] == 2
    assert "expect out-of-memory" in fixed["batch_reason"] and fixed["gradient_checkpointing"] is True
    with pytest.raises(ValueError, match="does not divide"):
        choose_micro_batch(shape=QWEN2_05B, seq_len=8, device_bytes=H100, states_bytes=0, precision="bf16",
                           pairs_per_step=16, on_gpu=True, micro_batch=3)
