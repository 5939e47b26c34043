"""Every shipped config fits every shipped cluster definition (or is exempt, with its reason), and a
request no node type can hold is named, with its stage, config key, request and the node types."""

from pathlib import Path

import pytest

from persodpo.config import load_config
from persodpo.feasibility import (Cluster, NodeType, check_feasibility, cluster_from_autoscaler,
                                  cluster_from_kuberay, cluster_from_node_groups, cluster_has_gpus, gpus_for_auto,
                                  k8s_quantity, load_cluster, requests_of, train_resources)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (REPO / "jobs" / "configs").glob("*.yaml"))
CLUSTERS = ["cluster/aws.yaml", "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml"]

# Configs written for one machine, by design: they fail on a cluster only for needing the driver's
# machine (a local run.root, a local: / local+vllm: server on 127.0.0.1, evaluate's transformers
# engine, which is such a server), which is what the check must then say. Their resource requests
# still fit. Stages: what their headers run (`persodpo generate` / `persodpo score` / `run`).
EXEMPT = {
    "generate_local.yaml": (["generate"], {"run.root", "generate.generators.1.api.api_base"}),
    "score_local.yaml": (["score"], {"run.root", "score.judges.0.api_base"}),
    # tiny also trains one CPU-sized worker of a random model: it asks no `train` resource.
    "tiny.yaml": (None, {"run.root", "generate.generators.0.api.api_base", "evaluate.engine",
                         "train.resources_per_worker"}),
}


def _failed(checks):
    return [c for c in checks if not c.ok]


def test_every_config_is_either_for_clusters_or_exempt_with_a_reason():
    assert set(EXEMPT) <= set(CONFIGS)
    assert {"focus_full.yaml", "focus_paper.yaml", "bst_paper.yaml"} <= set(CONFIGS) - set(EXEMPT)


@pytest.mark.parametrize("cluster_path", CLUSTERS)
@pytest.mark.parametrize("config", CONFIGS)
def test_matrix_every_config_against_every_cluster_definition(config, cluster_path):
    cfg = load_config(REPO / "jobs" / "configs" / config)
    cluster = load_cluster(REPO / cluster_path)
    stages, expected = EXEMPT.get(config, (None, set()))
    checks = check_feasibility(cfg, cluster, stages)
    resource_checks = [c for c in checks if ": " in c.name]  # "<stage>: <request>"
    assert resource_checks and all(c.ok for c in resource_checks), [c.detail for c in _failed(resource_checks)]
    failed = _failed(checks)
    assert {c.key for c in failed} == expected, [(c.key, c.detail) for c in failed]
    for c in failed:
        if c.name == "driver-local":
            assert "127.0.0.1" in c.detail or "s3://" in c.detail


def test_shipped_definitions_parse_like_the_autoscalers_read_them():
    aws = load_cluster(REPO / "cluster/aws.yaml")
    by = {t.name: t for t in aws.node_types}
    assert by["head"].head and by["head"].resources.get("CPU", 0) == 0
    assert by["gpu_generate"].resources["accelerator_type:A10G"] == 1 and by["gpu_generate"].max_workers == 16
    assert by["gpu_train"].resources["train"] == 8 and aws.max_workers == 40
    k8s = load_cluster(REPO / "cluster/kuberay/raycluster.yaml")
    kby = {t.name: t for t in k8s.node_types}
    assert kby["head"].resources == {"CPU": 0.0}
    assert kby["gpu-generate"].resources == {"CPU": 8, "GPU": 1, "generate": 1, "accelerator_type:A10G": 1}
    assert kby["gpu-generate"].labels == {"gpu": "NVIDIA-A10G"}
    assert kby["gpu-train"].resources["GPU"] == 8 and kby["gpu-train"].max_workers == 2
    job = load_cluster(REPO / "cluster/kuberay/rayjob.yaml")
    assert "clusterSelector" in job.source and job.node_types == k8s.node_types


def test_kuberay_parsing_matches_rays_own_kuberay_autoscaler():
    import yaml

    own = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    spec = yaml.safe_load((REPO / "cluster/kuberay/raycluster.yaml").read_text())["spec"]
    theirs = own._generate_available_node_types_from_ray_cr_spec(spec)
    ours = {t.name: t for t in cluster_from_kuberay(spec).node_types}
    for name, node in theirs.items():
        mine = ours["head" if name == "headgroup" else name]
        assert {k: v for k, v in node["resources"].items() if k != "memory"} == mine.resources, name
        assert node["max_workers"] == mine.max_workers


def test_kuberay_groups_from_limits_start_params_and_rayjob_spec(tmp_path):
    spec = {"headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": {"spec": {"containers": [{}]}}},
            "workerGroupSpecs": [
                {"groupName": "gpu", "minReplicas": 0, "maxReplicas": 3, "numOfHosts": 2,
                 "rayStartParams": {"resources": '"{\\"accelerator_type:L4\\": 1}"'},
                 "template": {"spec": {"containers": [{"resources": {"limits": {"cpu": "3500m",
                                                                                  "nvidia.com/gpu": 4}}}]}}},
                {"groupName": "top", "maxReplicas": 1, "resources": {"CPU": "2", "GPU": "1", "custom": "5"},
                 "template": {"spec": {"containers": [{}]}}}]}
    types = {t.name: t for t in cluster_from_kuberay(spec).node_types}
    assert types["gpu"].resources == {"CPU": 4, "GPU": 4, "accelerator_type:L4": 1} and types["gpu"].max_workers == 6
    assert types["top"].resources == {"CPU": 2, "GPU": 1, "custom": 5}
    assert k8s_quantity("500m") == 1 and k8s_quantity(8) == 8
    import yaml

    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"kind": "RayJob", "spec": {"rayClusterSpec": spec}}))
    assert load_cluster(tmp_path / "job.yaml").node_types == cluster_from_kuberay(spec).node_types


def _aws_check(*overrides, config="focus_full.yaml", stages=None):
    cfg = load_config(REPO / "jobs" / "configs" / config, list(overrides))
    return _failed(check_feasibility(cfg, load_cluster(REPO / "cluster/aws.yaml"), stages))


def test_an_accelerator_type_no_node_type_offers_names_stage_key_request_and_node_types():
    failed = _aws_check("generate.generators.0.vllm.accelerator_type=L4", stages=["generate"])
    assert len(failed) == 1
    c = failed[0]
    assert c.name == "generate: vLLM engine of llama-3.1-8b"
    assert c.key == "generate.generators.0.vllm.accelerator_type"
    assert "{GPU: 1, CPU: 1, accelerator_type:L4: 0.001}" in c.detail
    assert "accelerator_type:A10G" in c.detail  # what the node types do offer
    for node in ("head", "cpu_judge {CPU: 16} (max_workers 10)", "gpu_generate", "gpu_train"):
        assert node in c.detail


def test_tensor_parallel_wider_than_a_node_blames_tensor_parallel_size():
    failed = _aws_check("generate.generators.1.vllm.tensor_parallel_size=2", stages=["generate"])
    assert [c.key for c in failed] == ["generate.generators.1.vllm.tensor_parallel_size"]
    assert "{GPU: 2, CPU: 2, accelerator_type:A10G: 0.002}" in failed[0].detail
    assert "gpu_generate, is short of GPU: 2 (it has 1)" in failed[0].detail
    # Pipeline parallel stages may sit on separate nodes: 2 one-GPU stages fit.
    assert _aws_check("generate.generators.1.vllm.pipeline_parallel_size=2", stages=["generate"]) == []


def test_more_train_workers_than_max_workers_can_hold():
    failed = _aws_check("train.num_workers=24", stages=["train"])
    assert [(c.name, c.key) for c in failed] == [("train: 24 train workers (Ray Train)", "train.num_workers")]
    assert "24 x {CPU: 8, GPU: 1, train: 1}" in failed[0].detail and "gpu_train" in failed[0].detail
    assert "(max_workers 2)" in failed[0].detail
    assert _aws_check("train.num_workers=16", stages=["train"]) == []  # 2 nodes x 8 GPUs


def test_train_workers_without_the_train_resource_are_refused_where_nodes_reserve_it():
    failed = _aws_check("train.resources_per_worker={GPU: 1}", stages=["train"])
    assert [(c.name, c.key) for c in failed] == [("train placement", "train.resources_per_worker")]
    assert "spot" in failed[0].detail and "train: 1" in failed[0].detail


def test_minimum_pools_of_a_stage_must_fit_together():
    # Each generator alone fits 16 g5 nodes; 3 of them at a minimum of 8 engines do not.
    overrides = [f"generate.generators.{i}.vllm.concurrency=[8, 16]" for i in range(3)]
    failed = _aws_check(*overrides, stages=["generate"])
    assert [c.name for c in failed] == ["generate: minimum pools together"]
    assert failed[0].key == "generate.generators.0.vllm.concurrency"


def test_model_metric_gpus_and_judge_cpus_are_requests():
    cluster = Cluster("cpu only", (NodeType("head", {"CPU": 0}, 0, head=True), NodeType("cpu", {"CPU": 4}, 5)))
    cfg = load_config(REPO / "jobs" / "configs" / "focus_full.yaml")
    failed = _failed(check_feasibility(cfg, cluster, ["score"]))
    assert {c.key for c in failed} == {"score.metrics.4.num_gpus", "score.metrics.6.num_gpus"}
    assert any("c_score + coherence_nli" in c.name for c in failed)  # one pool: the same model
    reqs = {r.what: r for r in requests_of(cfg, cluster, ["score"])}
    assert reqs["judge actors of claude"].bundles == ({"CPU": 0.25},) and reqs["judge actors of claude"].count == 2


def test_a_cluster_without_cpus_for_tasks_fails_every_stage():
    cluster = Cluster("gpu only", (NodeType("head", {"CPU": 0}, 0, head=True),))
    failed = _failed(check_feasibility(load_config(REPO / "jobs" / "configs" / "focus_full.yaml"), cluster, []))
    assert [c.name for c in failed] == ["cpu tasks"]


def test_cluster_wide_max_workers_caps_the_nodes():
    doc = {"max_workers": 3, "head_node_type": "h",
           "available_node_types": {"h": {"resources": {"CPU": 0}}, "g": {"resources": {"CPU": 8, "GPU": 1},
                                                                           "max_workers": 16}}}
    cfg = load_config(REPO / "jobs" / "configs" / "focus_full.yaml",
                      ["generate.generators.0.vllm.accelerator_type=null", "generate.generators.0.vllm.concurrency=[4, 8]"])
    failed = _failed(check_feasibility(cfg, cluster_from_autoscaler(doc), ["generate"]))
    assert [c.key for c in failed][:1] == ["generate.generators.0.vllm.concurrency"]
    assert "4 at once" in failed[0].detail and "cluster max_workers 3" in failed[0].detail


def test_device_auto_and_use_gpu_follow_the_node_types_not_the_gpus_alive():
    gpu = cluster_from_autoscaler({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 0}}, "g": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 4}}})
    cpu = cluster_from_autoscaler({"cpu": {"resources": {"CPU": 16}, "max_workers": 4}})
    assert cluster_has_gpus(gpu) and not cluster_has_gpus(cpu) and not cluster_has_gpus(None)
    assert gpus_for_auto(0, gpu) and not gpus_for_auto(0, cpu) and gpus_for_auto(1, None)
    # A GPU type that may never be added (max_workers 0) is no GPU.
    assert not cluster_has_gpus(cluster_from_autoscaler({"g": {"resources": {"GPU": 1}, "max_workers": 0}}))
    cfg = load_config(REPO / "jobs" / "configs" / "tiny.yaml")
    assert train_resources(cfg.train, cluster_has_gpus(gpu)) == (True, {"CPU": 1.0, "GPU": 1.0})
    assert train_resources(cfg.train, cluster_has_gpus(cpu)) == (False, {"CPU": 1.0})
    # vllm device auto: a GPU bundle on the GPU cluster, a CPU bundle on the CPU one.
    gen = load_config(REPO / "jobs" / "configs" / "generate_local.yaml", ["generate.generators.0.vllm.device=auto"])
    assert requests_of(gen, gpu, ["generate"])[0].bundles == ({"GPU": 1.0, "CPU": 1.0},)
    assert requests_of(gen, cpu, ["generate"])[0].bundles == ({"CPU": 1.0},)


def test_live_node_groups_from_the_gcs_cluster_config():
    class Group:
        def __init__(self, name, resources, min_count, max_count):
            self.name, self.resources, self.min_count, self.max_count = name, resources, min_count, max_count

    cluster = cluster_from_node_groups([Group("g5", {"CPU": 8, "GPU": 1}, 0, -1), Group("m6i", {"CPU": 16}, 1, 4)])
    assert cluster_has_gpus(cluster)
    assert [(t.name, t.max_workers, t.min_workers) for t in cluster.node_types] == [("g5", 10_000, 0), ("m6i", 4, 1)]


def test_cli_check_with_a_cluster_exits_2_naming_the_key(capsys):
    from persodpo.cli import main

    config = str(REPO / "jobs" / "configs" / "focus_full.yaml")
    assert main(["check", "--config", config, "--cluster", str(REPO / "cluster/aws.yaml")]) == 0
    assert "gpu_generate" in capsys.readouterr().err
    rc = main(["check", "--config", config, "--cluster", str(REPO / "cluster/kuberay/raycluster.yaml"),
               "--set", "generate.generators.2.vllm.accelerator_type=L4"])
    err = capsys.readouterr().err
    assert rc == 2 and "key 'generate.generators.2.vllm.accelerator_type'" in err and "gpu-generate" in err


def test_submit_refuses_a_config_that_does_not_fit_before_submitting(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("submit", REPO / "jobs" / "submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    # No job server at this address: the refusal comes first.
    rc = submit.main(["--address", "http://127.0.0.1:9", "--config", str(REPO / "jobs/configs/focus_paper.yaml"),
                      "--run-id", "r", "--stage", "generate", "--cluster", str(REPO / "cluster/aws.yaml"),
                      "--set", "generate.generators.0.vllm.accelerator_type=L4"])
    err = capsys.readouterr().err
    assert rc == 2 and "not submitted" in err and "generate.generators.0.vllm.accelerator_type" in err
