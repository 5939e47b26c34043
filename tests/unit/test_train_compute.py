"""Training's compute before it runs (persodpo.train.compute, used by `persodpo plan`): FLOPs of DPO
from the model's size and tokens, GPU-hours over an accelerator's peak. Pure arithmetic."""

from __future__ import annotations

import pytest

from persodpo.train.compute import DEFAULT_MFU, dpo_flops, gpu_hours, peak_flops
from persodpo.train.memory import ModelShape

QWEN2_05B = ModelShape(layers=24, hidden=896, intermediate=4864, vocab=151936)
N = 494_032_768


def test_full_fine_tuning_costs_eight_n_per_token_plus_attention():
    # 10,000 pairs of 2 x 600 tokens, one epoch: policy 6N + reference 2N per token, and attention
    # (2 x layers x seq x hidden forward per token: 3x for the policy, 1x for the reference).
    tokens, seq = 10_000 * 1200, 600
    attention = 2 * 24 * seq * 896
    want = (8 * N + 4 * attention) * tokens
    got = dpo_flops(n_params=N, trainable=N, shape=QWEN2_05B, tokens=tokens, seq_len=seq, epochs=1)
    assert got == pytest.approx(want)
    assert 4 * attention / (8 * N) == pytest.approx(0.026, abs=0.001)   # attention: small at 600 tokens, not nothing


def test_epochs_lora_and_a_precomputed_reference_change_what_they_should():
    kw = dict(n_params=N, shape=QWEN2_05B, tokens=1e7, seq_len=500)
    full3 = dpo_flops(trainable=N, epochs=3, **kw)
    assert full3 == pytest.approx(3 * dpo_flops(trainable=N, epochs=1, **kw))
    # adapters: no weight gradients for the frozen matrices, the backward about halves
    assert dpo_flops(trainable=N // 100, epochs=3, **kw) < full3
    # one reference pass in all instead of one per epoch: two passes of 2N (+ attention) saved
    saved = full3 - dpo_flops(trainable=N, epochs=3, precompute_ref=True, **kw)
    assert saved == pytest.approx(2 * (2 * N + 2 * 24 * 500 * 896) * 1e7)


def test_gpu_hours_over_the_accelerators_peak_at_the_assumed_utilisation():
    assert peak_flops("H100") == peak_flops("accelerator_type:H100") == peak_flops("nvidia_h100") == 989e12
    assert peak_flops("A100") == 312e12 and peak_flops("TPU-V4") is None
    flops = 989e12 * 3600 * DEFAULT_MFU          # one hour of an H100 at the default MFU
    assert gpu_hours(flops, "H100") == pytest.approx(1.0)
    assert gpu_hours(flops, "H100", mfu=0.6) == pytest.approx(0.5)
    assert gpu_hours(flops, "A100") == pytest.approx(989 / 312)
    assert gpu_hours(flops, "MI300X") is None                          # not in the table: unknown, not a guess
