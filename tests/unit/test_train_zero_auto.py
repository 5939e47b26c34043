"""train.zero_stage: auto (persodpo.train.zero.choose_zero_stage): pure arithmetic, no GPU needed."""

from __future__ import annotations

import pytest

from persodpo.config import load_config
from persodpo.train.zero import GiB, choose_zero_stage, count_parameters, state_bytes

H100 = 80 * GiB


def _choose(n, world, *, mem=H100, gpu=True, accum=4, trainable=None, **kw):
    return choose_zero_stage(n_params=int(n), trainable=int(n if trainable is None else trainable), world_size=world,
                             device_bytes=mem, on_gpu=gpu, precision="bf16" if gpu else "fp32", grad_accum=accum,
                             ref_copy=kw.pop("ref_copy", True), **kw)


def test_state_bytes_follow_the_zero_paper():
    n = 1e9
    # Plain DDP: fp32 weights + grads + Adam moments, and an fp32 reference.
    assert state_bytes(0, n_params=n, trainable=n, world_size=8, precision="bf16", ref_copy=True) == 20 * n
    # bf16 under DeepSpeed, 8 ranks: ZeRO-1 2+2+12/8 (+2 ref), ZeRO-2 2+2/8+12/8 (+2), ZeRO-3 everything / 8.
    assert state_bytes(1, n_params=n, trainable=n, world_size=8, precision="bf16", ref_copy=True) == 7.5 * n
    assert state_bytes(2, n_params=n, trainable=n, world_size=8, precision="bf16", ref_copy=True) == 5.75 * n
    assert state_bytes(3, n_params=n, trainable=n, world_size=8, precision="bf16", ref_copy=True) == 18 * n / 8
    # Optimizer offload removes the optimizer term; no reference copy removes that term.
    assert state_bytes(2, n_params=n, trainable=n, world_size=8, precision="bf16", ref_copy=False,
                       offload_optimizer=True) == 2.25 * n


def test_small_model_on_big_gpus_gets_plain_ddp():
    stage, why = _choose(0.5e9, 4)
    assert stage == 0 and "ZeRO-0" in why and "4 worker(s)" in why and "GPU memory 80.0 GiB" in why


def test_the_stage_grows_with_the_model():
    assert _choose(7.6e9, 8)[0] == 2            # 7B on 8x80 GiB: ZeRO-1 (57 GiB) is over 60% of 80 GiB
    assert _choose(3e9, 8)[0] == 1              # ZeRO-1 fits and reduces once per step (accumulation 4)
    assert _choose(3e9, 8, accum=1)[0] == 2     # without accumulation ZeRO-2 costs the same and saves memory
    stage, why = _choose(20e9, 8)
    assert stage == 3 and "do not" in why and "ZeRO-2" in why


def test_one_gpu_cannot_shard_and_too_big_says_so():
    assert _choose(0.5e9, 1)[0] == 0
    stage, why = _choose(70e9, 1)
    assert "expect out-of-memory" in why and stage == 2
    # smaller GPUs push a model up the ladder; the smallest device of the run is what counts
    assert _choose(1.5e9, 4, mem=24 * GiB)[0] > _choose(1.5e9, 4, mem=80 * GiB)[0]


def test_lora_and_precomputed_reference_need_less():
    # 7B full fine-tune on 8 x 40 GiB needs ZeRO-3; LoRA (1% trainable, no reference copy) fits
    # ZeRO-1 (16-bit frozen weights, nothing of the weights sharded).
    assert _choose(7.6e9, 8, mem=40 * GiB)[0] == 3
    assert _choose(7.6e9, 8, mem=40 * GiB, trainable=7.6e7, ref_copy=False)[0] == 1


def test_offload_settings_constrain_the_stage():
    assert _choose(0.5e9, 2, offload_params=True) == (3, "train.offload_params needs ZeRO-3")
    assert _choose(0.5e9, 2, offload_optimizer=True)[0] == 2


def test_cpu_uses_only_the_paths_verified_here():
    assert _choose(0.135e9, 2, mem=12 * GiB, gpu=False)[0] == 2     # never 1, never DDP over gloo
    assert _choose(0.135e9, 1, mem=12 * GiB, gpu=False)[0] == 0
    stage, why = _choose(0.135e9, 2, mem=0.5 * GiB, gpu=False)
    assert stage == 3 and "host memory" in why


def test_parameter_count_from_the_config_alone():
    import math
    from pathlib import Path

    from safetensors import safe_open

    from persodpo.models import resolve_model

    path = resolve_model("tiny:llama")
    n, trainable = count_parameters(path)
    with safe_open(str(Path(path) / "model.safetensors"), "np") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert n == trainable == stored > 0
    assert count_parameters(path, lora_trainable=0.01)[1] == int(n * 0.01)


def test_config_accepts_auto_and_dpo_args_refuse_it_unresolved(tmp_path):
    from persodpo.train.dpo import dpo_args

    c = load_config(None, ["train.zero_stage=auto", "train.offload_params=true"]).train
    assert c.zero_stage == "auto"
    with pytest.raises(ValueError, match="resolved first"):
        dpo_args(c, output_dir=str(tmp_path), world_size=1, on_gpu=False)


def test_resolution_keeps_a_resumed_checkpoints_stage():
    from persodpo.train.worker import resolve_zero_stage

    c = load_config(None, ["train.zero_stage=auto"]).train
    kw = dict(model_path="unused", world=2, on_gpu=False, local_rank=0, local_world=2)
    assert resolve_zero_stage(c, resumed={"zero_stage": 3}, **kw)[0] == 3
    explicit = load_config(None, ["train.zero_stage=2"]).train
    assert resolve_zero_stage(explicit, resumed={"zero_stage": 3}, **kw) == (2, "set in train.zero_stage")
