"""train.liger / train.attn_implementation: passed through on GPUs, clean fallbacks on CPU."""

from __future__ import annotations

import pytest

from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.train.kernels import kernel_settings


def test_cpu_drops_cuda_only_kernels_and_says_so():
    liger, attn, notes = kernel_settings(liger=True, attn_implementation="flash_attention_2", on_gpu=False,
                                         have_liger=False, have_flash=False)
    assert (liger, attn) == (False, "sdpa")
    assert any("train.liger" in n for n in notes) and any("sdpa" in n for n in notes)
    assert kernel_settings(liger=False, attn_implementation="eager", on_gpu=False, have_liger=False,
                           have_flash=False) == (False, "eager", [])


def test_gpu_passes_them_through_or_names_the_missing_package():
    assert kernel_settings(liger=True, attn_implementation="flash_attention_2", on_gpu=True, have_liger=True,
                           have_flash=True) == (True, "flash_attention_2", [])
    with pytest.raises(ConfigError) as err:
        kernel_settings(liger=True, attn_implementation=None, on_gpu=True, have_liger=False, have_flash=True)
    assert err.value.key == "train.liger"
    with pytest.raises(ConfigError) as err:
        kernel_settings(liger=False, attn_implementation="flash_attention_2", on_gpu=True, have_liger=False,
                        have_flash=False)
    assert err.value.key == "train.attn_implementation"


def test_dpo_args_on_cpu_fall_back_and_pass_the_reference_and_sampler_settings(tmp_path, caplog):
    from persodpo.train.dpo import dpo_args

    c = load_config(None, ["train.zero_stage=0", "train.liger=true", "train.attn_implementation=flash_attention_2",
                           "train.precompute_ref_log_probs=true", "train.report_to=[none]"]).train
    with caplog.at_level("INFO", logger="persodpo.train.dpo"):
        a = dpo_args(c, output_dir=str(tmp_path), world_size=2, on_gpu=False)
    assert a.use_liger_kernel is False and a.model_init_kwargs["attn_implementation"] == "sdpa"
    assert "train.liger=true ignored" in caplog.text
    assert a.precompute_ref_log_probs is True
    # transformers' own group_by_length cannot read TRL's columns: PersoDPOTrainer groups instead
    assert a.train_sampling_strategy == "random"
