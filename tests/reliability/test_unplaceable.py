"""A request that no node can hold fails its stage after ``ray.infeasible_timeout_s``, naming the
request, instead of waiting for ever (persodpo.raycluster.PlacementWatchdog)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_vllm_engine_no_node_can_hold_fails_generate_naming_the_request(tmp_path):
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["run"] = {"root": str(tmp_path / "root"), "run_id": "unplaceable", "stages": ["ingest", "generate"]}
    cfg["ray"] = {"num_cpus": 4, "progress_bars": False, "infeasible_timeout_s": 15}
    # As a config written for another cluster: its engines ask for a node type this one lacks.
    cfg["generate"]["generators"] = [{
        "name": "tiny-vllm", "backend": "vllm", "model": "tiny:llama", "samples": 1,
        "vllm": {"device": "cpu", "max_model_len": 1024, "dtype": "float32", "resources": {"gpu_h100_node": 1}}}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not the test session's
    try:
        r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(path)], cwd=REPO,
                           capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the run waited instead of failing:\n" + (exc.stderr or b"").decode()[-4000:]) from None
    wall = time.time() - t0
    assert r.returncode != 0, r.stderr[-3000:]
    assert "generate: could not be placed for 15 s (ray.infeasible_timeout_s)" in r.stderr, r.stderr[-3000:]
    assert "'gpu_h100_node': 1.0" in r.stderr and "fits no node" in r.stderr and "persodpo check" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and "could not be placed" in summary["error"]
    assert not (tmp_path / "root" / "runs" / "unplaceable" / "generate" / "_SUCCESS").exists()
    print(f"\nunplaceable engine: the run failed after {wall:.0f} s (timeout 15 s)")
