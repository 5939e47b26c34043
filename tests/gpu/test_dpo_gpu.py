"""DPO on one GPU: TRL + DeepSpeed ZeRO-2 and ZeRO-3 (no Ray), bf16, a small Qwen2-shaped model.

Skipped without CUDA (and without trl/deepspeed, which the GPU machine gets as carried wheels:
run it there with `bash bench/train_gpu.sh --pytest`). Each stage runs in its own process
through bench/train_gpu.py, the script whose 0.5B numbers go into the notes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("trl", "deepspeed", "datasets")),
                       reason="needs trl, deepspeed and datasets (bench/train_gpu.sh installs the carried wheels)"),
]

REPO = Path(__file__).resolve().parents[2]


def test_zero2_and_zero3_learn_the_easy_preference_on_one_gpu(tmp_path):
    cmd = [sys.executable, str(REPO / "bench" / "train_gpu.py"), "--tiny", "--data", "easy", "--lr", "1e-3",
           "--steps", "10", "--batch", "8", "--max-length", "256", "--model-dir", str(tmp_path / "model")]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
    runs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith('{"run"')]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [r["zero_stage"] for r in runs] == [2, 3]
    for r in runs:
        assert r["device"] != "cpu" and r["precision"] == "bf16"
        assert math.isfinite(r["loss_first"]) and r["loss_last"] < r["loss_first"], r
        assert r["tokens_per_s"] > 0 and r["max_mem_gib"] > 0
