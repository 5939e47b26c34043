"""A run submitted to an autoscaling cluster that starts with no worker nodes (tests/support/
autoscaling.py: Ray's real autoscaler v2, node types from cluster/aws.yaml). The head runs no
tasks, so every task and actor waits for a node the autoscaler adds; the run's tables equal those
of the same config on one local node, and the nodes are gone after the idle timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from persodpo import storage as st
from tests.support.openai_server import OpenAIServer, echo_json

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def judge_responder(messages, body):
    text = messages[-1]["content"]
    return json.dumps({"score": 1 + (sum(map(ord, text)) % 5)})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    from tests.support.autoscaling import AutoscalingCluster, scaled_node_types

    types = scaled_node_types(REPO / "cluster" / "aws.yaml", {"cpu_judge": 2, "gpu_generate": 2})
    c = AutoscalingCluster(tmp_path_factory.mktemp("autoscaling"), types, idle_timeout_minutes=0.25,
                           env=s3_server.env()).start()
    yield c
    c.stop()


def _config(path: Path, gen_base: str, judge_base: str) -> Path:
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["run"] = {"stages": ["ingest", "generate", "score"]}
    cfg["ray"] = {"progress_bars": False, "num_cpus": 4}
    cfg["generate"]["template"] = "persobench-json-v1"
    cfg["generate"]["generators"] = [{
        "name": "api", "backend": "api", "model": "openai/loopback", "samples": 2,
        "sampling": {"temperature": 1.0, "max_tokens": 32},
        "api": {"api_base": gen_base, "concurrency": [1, 2], "max_in_flight": 4, "batch_size": 4, "max_retries": 2}}]
    cfg["score"]["judges"] = [{"name": "j1", "model": "openai/judge", "api_base": judge_base, "max_retries": 2,
                               "concurrency": [1, 2], "timeout_s": 30}]
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tables(root: str, run_id: str) -> dict:
    out = {}
    for stage in ("ingest", "generate", "score"):
        t = st.read_table(st.join(root, "runs", run_id, stage))
        t = t.drop_columns([c for c in t.column_names if c in ("generated_at", "latency_s", "scored_at")])
        key = "prompt_id" if stage == "ingest" else "candidate_id"
        out[stage] = t.take(pc.sort_indices(t, [(key, "ascending")])).to_pylist()
    return out


def test_a_submitted_run_scales_workers_from_zero_and_they_go_when_idle(cluster, s3_env, tmp_path):
    root = f"s3://{s3_env['bucket']}/root"
    assert cluster.worker_nodes() == {}, "the cluster must start without worker nodes"
    env = {**os.environ, **s3_env["server"].env(), "PYTHONPATH": str(REPO)}
    with OpenAIServer(echo_json(), latency_s=0.2) as gen, OpenAIServer(judge_responder) as judge:
        (tmp_path / "job").mkdir()
        config = _config(tmp_path / "job" / "auto.yaml", gen.api_base, judge.api_base)
        # The same config on one local node: the reference tables.
        r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(config), "--run-id", "single",
                            "--root", root], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == 0, r.stderr[-4000:]

        seen: list[dict] = []
        done = threading.Event()

        def watch():
            while not done.is_set():
                seen.append(cluster.worker_nodes())
                time.sleep(1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # The job ships only its config (working_dir); the code is the nodes' installed package,
        # as in the cluster image.
        (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(
            {"working_dir": str(config.parent), "env_vars": {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}}))
        try:
            r = subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "--address", cluster.address,
                                "--config", str(config), "--run-id", "auto", "--root", root,
                                "--runtime-env", str(tmp_path / "runtime_env.yaml")],
                               cwd=REPO, capture_output=True, text=True, timeout=1200,
                               env={**env, **cluster.client_env()})
        finally:
            done.set()
            watcher.join(5)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["status"] == "SUCCEEDED", result
    peak = {t: max(s.get(t, 0) for s in seen) for s in seen for t in s}
    assert sum(peak.values()) >= 1, "no worker node was ever added"
    assert _tables(root, "auto") == _tables(root, "single")

    deadline = time.time() + 180
    while time.time() < deadline and cluster.worker_nodes():
        time.sleep(2)
    left = cluster.worker_nodes()
    print(f"\nautoscaling: worker nodes by type at their peak {peak}; samples {len(seen)} s; "
          f"after the idle timeout: {left or 'none'}")
    assert left == {}, f"worker nodes still up after the idle timeout: {left}"
