"""The pairs output where it goes and where it is used: a real S3 server, `datasets`, TRL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from persodpo import storage as st
from persodpo.config import load_config
from persodpo.pairs.config import AUTHORS_PERSODPO_WEIGHTS
from persodpo.pairs.stage import run_stage
from tests.unit.test_pairs_stage import write_inputs

# write_inputs scores with the authors' four columns
AUTHORS_WEIGHTS = f"pairs.persodpo.weights={json.dumps(AUTHORS_PERSODPO_WEIGHTS)}"


def test_inputs_and_output_on_s3(s3_env):
    bucket = s3_env["bucket"]
    uris = write_inputs(f"s3://{bucket}/run")
    out = f"s3://{bucket}/run/pairs"
    r = subprocess.run([sys.executable, "-m", "persodpo", "pairs", "--input", uris["scores"], "--candidates",
                        uris["candidates"], "--prompts", uris["prompts"], "--output", out,
                        "--set", "pairs.persodpo.min_margin=0.1", "--set", AUTHORS_WEIGHTS],
                       capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["output"] == out and summary["n_pairs"] > 0
    assert st.read_table(out).num_rows == summary["n_pairs"]
    keys = {o["Key"] for o in s3_env["server"].client().list_objects_v2(Bucket=bucket, Prefix="run/pairs/")["Contents"]}
    for name in ("_SUCCESS", "_manifest.json", "README.md", "data_card.md", "pairs.html", "stats.json", "margins.png",
                 "data/train-00000.parquet"):
        assert f"run/pairs/{name}" in keys
    card = s3_env["server"].client().get_object(Bucket=bucket, Key="run/pairs/data_card.md")["Body"].read().decode()
    assert "# Data card: pairs from recipe `persodpo`" in card
    assert s3_env["server"].secret_key not in card + json.dumps(st.read_manifest(out))


def test_datasets_loads_it_and_trl_dpo_trains_on_it_unchanged(tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from persodpo.models import resolve_model

    uris = write_inputs(tmp_path)
    out = str(tmp_path / "pairs")
    run_stage(load_config(None, [f"pairs.input={uris['scores']}", f"pairs.candidates={uris['candidates']}",
                                 f"pairs.prompts={uris['prompts']}", f"pairs.output={out}", "pairs.plots=false",
                                 "pairs.persodpo.min_margin=0.1", AUTHORS_WEIGHTS]))
    ds = datasets.load_dataset("parquet", data_files=[st.resolve(p)[1] for p in st.part_uris(out)], split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds[0]["chosen"][0]["role"] == "assistant" and ds[0]["prompt"][0]["role"] == "user"

    path = resolve_model("tiny:qwen2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3,
                     bf16=False, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
                     max_length=1024, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
