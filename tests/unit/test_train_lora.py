"""LoRA: TRL trains an adapter (reference = base with the adapter off); we write the merged model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_lora_adapter_trains_and_merges_into_a_plain_model(tmp_path):
    import datasets
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from persodpo.config import load_config
    from persodpo.models import resolve_model
    from persodpo.train.data import training_rows
    from persodpo.train.dpo import dpo_args, lora_config
    from persodpo.train.synthetic import easy_pairs
    from persodpo.train.worker import merge_lora

    c = load_config(None, ["train.model=tiny:llama", "train.lora.enabled=true", "train.lora.r=4",
                           "train.per_device_batch_size=4", "train.zero_stage=0", "train.report_to=[none]",
                           "train.max_steps=3", "train.logging_steps=1", "train.learning_rate=0.01",
                           "train.warmup_ratio=0.0", "train.max_length=128"]).train
    path = resolve_model(c.model)
    args = dpo_args(c, output_dir=str(tmp_path / "run"), world_size=1, on_gpu=False)
    args.save_strategy = "no"
    rows = training_rows(easy_pairs(12), pair_types=c.pair_types)
    t = DPOTrainer(model=path, args=args, train_dataset=datasets.Dataset(datasets.table.InMemoryTable(rows)),
                   processing_class=AutoTokenizer.from_pretrained(path), peft_config=lora_config(c))
    assert t.ref_model is None            # the reference is the base model with the adapter disabled
    t.train()
    losses = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    t.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    merge_lora(path, str(tmp_path / "adapter"), str(tmp_path / "merged"))
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    base = AutoModelForCausalLM.from_pretrained(path)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[w], base.state_dict()[w])
