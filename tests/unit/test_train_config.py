"""The train section of the config and the DeepSpeed ZeRO config builder (pure functions)."""

from __future__ import annotations

import pytest

from persodpo.config import load_config
from persodpo.errors import ConfigError
from persodpo.train.zero import zero_config


def test_defaults_run_offline_and_overrides_are_typed():
    cfg = load_config(None, ["train.zero_stage=3", "train.lora.enabled=true", "train.loss_type=[sigmoid, sft]",
                             "train.loss_weights=[1.0, 0.2]", "train.report_to=[none]"])
    t = cfg.train
    assert t.model.startswith("packaged:") and t.zero_stage == 3 and t.lora.enabled
    assert t.loss_type == ["sigmoid", "sft"] and t.loss_weights == [1.0, 0.2] and t.report_to == []


@pytest.mark.parametrize("override, key", [
    ("train.loss_type=[sigmod]", "train.loss_type"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("train.offload_params=true", "train"),                      # needs ZeRO-3
    ("train.beta=0", "train.beta"),
    ("train.warmup_ratio=1.0", "train.warmup_ratio"),
    ("train.run_name=a/b", "train"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key


def test_margin_weighting_refuses_losses_that_sort_the_batch():
    with pytest.raises(ConfigError, match="sort the pairs"):
        load_config(None, ["train.margin_weighting=linear", "train.loss_type=[aot]"])


def test_loss_weights_must_match_loss_types():
    with pytest.raises(ConfigError, match="loss_weights"):
        load_config(None, ["train.loss_type=[sigmoid, sft]", "train.loss_weights=[1.0]"])


def test_run_name_ignores_bookkeeping_but_not_training_fields():
    from persodpo.train.stage import run_name

    base = run_name(load_config(None, ["train.input=p"]))
    assert base.startswith("dpo-")
    assert run_name(load_config(None, ["train.input=p", "train.max_failures=5", "train.logging_steps=1",
                                       "train.output=s3://b/x", "train.report_to=[wandb]"])) == base
    assert run_name(load_config(None, ["train.input=p", "train.learning_rate=0.1"])) != base
    assert run_name(load_config(None, ["train.input=q"])) != base
    assert run_name(load_config(None, ["train.run_name=mine"])) == "mine"


# -- DeepSpeed -----------------------------------------------------------------------------------
def test_zero2_batch_arithmetic_and_no_param_offload():
    c = zero_config(2, micro_batch_size=4, grad_accum=8, world_size=16, precision="bf16", grad_clip=0.5)
    assert c["train_batch_size"] == 4 * 8 * 16
    assert c["train_micro_batch_size_per_gpu"] == 4 and c["gradient_accumulation_steps"] == 8
    assert c["gradient_clipping"] == 0.5
    z = c["zero_optimization"]
    assert z["stage"] == 2 and "offload_param" not in z and "offload_optimizer" not in z
    assert z["reduce_scatter"] and not z["overlap_comm"]      # no CUDA streams on CPU
    assert c["bf16"] == {"enabled": True} and not c["fp16"]["enabled"]


def test_zero3_gathers_weights_on_save_and_offloads_on_request():
    c = zero_config(3, micro_batch_size=1, grad_accum=1, world_size=2, offload_optimizer=True,
                    offload_params=True, on_gpu=True)
    z = c["zero_optimization"]
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert z["overlap_comm"] is True
    assert not c["bf16"]["enabled"] and not c["fp16"]["enabled"]       # fp32 default
    assert c["zero_force_ds_cpu_optimizer"] is False                   # torch AdamW, no op compile


@pytest.mark.parametrize("kwargs, msg", [
    (dict(stage=0), "stage must be"), (dict(stage=2, offload_params=True), "needs ZeRO-3"),
    (dict(stage=2, precision="int8"), "precision"), (dict(stage=2, world_size=0), ">= 1"),
])
def test_zero_config_refuses_impossible_settings(kwargs, msg):
    args = dict(micro_batch_size=1, grad_accum=1, world_size=1)
    args.update(kwargs)
    stage = args.pop("stage")
    with pytest.raises(ValueError, match=msg):
        zero_config(stage, **args)


def test_dpo_args_map_our_fields_onto_trl(tmp_path):
    from persodpo.train.dpo import dpo_args

    c = load_config(None, ["train.zero_stage=0", "train.beta=0.3", "train.max_steps=7", "train.loss_type=[ipo]",
                           "train.report_to=[none]", "train.per_device_batch_size=3"]).train
    a = dpo_args(c, output_dir=str(tmp_path), world_size=1, on_gpu=False)
    assert (a.beta, a.max_steps, a.loss_type, a.per_device_train_batch_size) == (0.3, 7, ["ipo"], 3)
    assert a.use_cpu and not a.bf16 and a.deepspeed is None and a.report_to == []
    assert a.save_total_limit == 1 and a.logging_first_step


def test_summary_loss_curve_is_thinned_but_keeps_the_last_value():
    from persodpo.train.stage import _thin

    assert _thin([1, 2, 3]) == [1, 2, 3]
    t = _thin(list(range(1000)))
    assert len(t) == 100 and t[0] == 0 and t[-1] == 999 and t == sorted(t)


def test_worker_errors_come_back_as_our_errors():
    """Ray Train 2.60 wraps a worker's exception (WorkerGroupError -> UserExceptionWithTraceback);
    ours is re-raised as itself, anything else as a StageError with the worker traceback."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from persodpo.errors import StageError
    from persodpo.train.stage import _raise_worker_error

    diverged = StageError("workers diverged at step 1")
    wrapped = WorkerGroupError("rank 1 failed", {1: UserExceptionWithTraceback(diverged, "Traceback ...")})
    with pytest.raises(StageError) as err:
        _raise_worker_error(wrapped)
    assert err.value is diverged
    other = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(RuntimeError("oom"), "Traceback: oom")})
    with pytest.raises(StageError, match="training failed on worker rank 0: Traceback: oom"):
        _raise_worker_error(other)
