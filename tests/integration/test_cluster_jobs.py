"""cluster/ and jobs/: the manifests validate, and `ray job submit` runs persodpo on a real head."""

import copy
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

import ray
from persodpo import storage as st

REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"(KEY|SECRET|(^|_)TOKEN|PASSWORD)(_ID)?$|SECRET", re.I)


def test_autoscaler_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_generate"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert types["cpu_judge"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in types["gpu_train"]["node_config"]  # on-demand for training
    assert types["gpu_train"]["resources"]["GPU"] == 8
    # The validator really checks: a typo in a node type is rejected.
    broken = copy.deepcopy(config)
    broken["available_node_types"]["cpu_judge"]["max_worker"] = 3
    with pytest.raises(Exception):
        validate_config(broken)


def _docs(path):
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def _check_pod_template(t, where):
    containers = t["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers), where
    for c in containers:
        for e in c.get("env", []):
            # Secrets only by reference (valueFrom / envFrom), never a literal value in the manifest.
            if SECRET_NAME.search(e["name"]):
                assert "valueFrom" in e and "value" not in e, (where, e["name"])


def test_kuberay_raycluster_has_the_fields_the_crd_requires():
    (rc,) = _docs("cluster/kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    _check_pod_template(spec["headGroupSpec"]["template"], "head")
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-judge", "gpu-generate", "gpu-train"}
    for name, g in groups.items():
        assert isinstance(g["minReplicas"], int) and isinstance(g["maxReplicas"], int)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        assert isinstance(g.get("rayStartParams", {}), dict)
        _check_pod_template(g["template"], name)
    gpu = groups["gpu-generate"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"


def test_kuberay_rayjob_targets_the_cluster_and_parses_its_runtime_env():
    (job,) = _docs("cluster/kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "persodpo"
    assert job["spec"]["entrypoint"].startswith("persodpo run --config jobs/configs/")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert set(env) <= {"working_dir", "env_vars", "pip", "py_modules"}


def test_runtime_env_holds_no_credentials():
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert env.get("env_vars"), "the runtime env sets some variables"
    assert not [n for n in env["env_vars"] if SECRET_NAME.search(n)]
    assert SECRET_NAME.search("OPENAI_API_KEY") and SECRET_NAME.search("AWS_SECRET_ACCESS_KEY")
    assert not SECRET_NAME.search("TOKENIZERS_PARALLELISM")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    from tests.support.rayhead import RayHead

    head = RayHead(tmp_path_factory.mktemp("rayhead"), num_cpus=8).start()
    yield head
    head.stop()


def _submit(head, *args):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "submit.py"), "--address", head.address, *args],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **head.env()}, cwd=REPO)


@pytest.mark.slow
def test_ray_job_submit_runs_persodpo_and_a_resubmission_does_not_duplicate(ray_head, tmp_path):
    root = str(tmp_path / "root")
    # Tiny models through pairs (training and evaluation under a job are the same code as in
    # test_pipeline.py; the suite's time budget): Ray Data stages on the head's workers, code from
    # the uploaded working_dir, a local model server started by the job's driver.
    args = ["--config", "jobs/configs/tiny.yaml", "--run-id", "jobtest", "--root", root,
            "--set", "run.stages=[ingest,generate,score,pairs]"]
    r = _submit(ray_head, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["status"] == "SUCCEEDED" and result["submission_id"] == "persodpo-jobtest-run"
    stages = result["summary"]["stages"]
    assert result["summary"]["ok"] and list(stages) == ["ingest", "generate", "score", "pairs"]
    assert all(s["status"] == "ran" for s in stages.values()), stages
    run = st.join(root, "runs", "jobtest")
    for stage in stages:
        assert st.is_complete(st.join(run, stage)), stage
    assert stages["generate"]["errors"] == 0 and stages["pairs"]["n_pairs"] > 0

    again = _submit(ray_head, *args)
    assert again.returncode == 0 and "already exists (SUCCEEDED)" in again.stderr
    req = urllib.request.Request(ray_head.address + "/api/jobs/",
                                 headers={"Authorization": f"Bearer {ray_head.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        jobs = [j for j in json.loads(resp.read()) if (j.get("submission_id") or "").startswith("persodpo-jobtest")]
    assert len(jobs) == 1
