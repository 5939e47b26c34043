"""Does a config fit a cluster? Every resource request a run makes, against the cluster's node types.

A Ray request that no node type can hold is not an error in Ray: the placement group or actor
waits forever (the autoscaler logs "infeasible" on the head, the job shows nothing). So the
requests are derived here from the configuration exactly as the stages make them, and checked
against a cluster definition before anything runs:

- a Ray autoscaler YAML (``cluster/aws.yaml``; the same shape as a live cluster's
  ``available_node_types``), or the KubeRay ``RayCluster`` / ``RayJob`` manifests
  (``cluster/kuberay/``), read the way KubeRay's autoscaler reads them;
- per request: some node type holds one bundle, and the minimum pool (all train workers, one
  engine's placement group, a pool's ``min`` actors) fits within the node types' ``max_workers``;
- per stage: the minimum pools of the operators that stream together fit at once.

Pure: reads only the configuration and the definition (no Ray, no network), except
:func:`live_cluster`, which asks the connected cluster what its autoscaler published.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from persodpo.check import Check
from persodpo.errors import ConfigError

if TYPE_CHECKING:
    from persodpo.config import PersoDPOConfig

ACCELERATOR_PREFIX = "accelerator_type:"
# What Ray adds per bundle for an accelerator_type constraint (ray.data.llm, Ray Train, Ray Core).
ACCELERATOR_SHARE = 0.001
# A node group whose size Ray reports as -1 ("unlimited") is counted as this many nodes.
UNLIMITED = 10_000
EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: Mapping[str, float]
    max_workers: int
    min_workers: int = 0
    head: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def max_nodes(self) -> int:
        return 1 if self.head else self.max_workers

    def describe(self) -> str:
        where = "head" if self.head else f"max_workers {self.max_workers}"
        extra = "".join(f", {k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.name} {format_resources(self.resources)} ({where}{extra})"


@dataclass(frozen=True)
class Cluster:
    source: str
    node_types: tuple[NodeType, ...]
    max_workers: int | None = None  # the autoscaler YAML's cluster-wide cap on worker nodes

    def describe(self) -> str:
        return "; ".join(t.describe() for t in self.node_types)


@dataclass(frozen=True)
class Request:
    """Resources a stage asks Ray for: ``count`` gangs of ``bundles``, each gang needed whole
    (one vLLM engine's placement group, all train workers), ``count`` at once (a pool's minimum)."""

    stage: str
    what: str
    key: str
    bundles: tuple[Mapping[str, float], ...]
    count: int = 1
    count_key: str | None = None
    # config key to blame when a given resource is what no node type offers
    resource_keys: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        gang = format_resources(self.bundles[0]) if len(set(map(_frozen, self.bundles))) == 1 else \
            " + ".join(format_resources(b) for b in self.bundles)
        if len(self.bundles) > 1 and len(set(map(_frozen, self.bundles))) == 1:
            gang = f"{len(self.bundles)} x {gang}"
        return gang + (f", {self.count} at once" if self.count > 1 else "")


def _frozen(bundle: Mapping[str, float]) -> tuple:
    return tuple(sorted(bundle.items()))


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def format_resources(res: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in res.items() if v) + "}" if any(res.values()) else "{}"


# -- cluster definitions -------------------------------------------------------------------------

def cluster_from_autoscaler(doc: Mapping[str, Any], source: str = "autoscaler config") -> Cluster:
    """A Ray autoscaler config (``ray up`` YAML, or a live cluster's): ``available_node_types``
    with ``resources`` and ``min_workers``/``max_workers``; ``head_node_type`` names the head.
    A bare ``available_node_types`` mapping is accepted too.

    Only what the YAML declares counts: the AWS provider fills in CPU/GPU from the instance type at
    ``ray up``, but an ``accelerator_type:`` resource a request names must be declared for this
    check (declaring it is harmless: the node reports the same resource itself)."""
    types = doc.get("available_node_types", doc)
    head_name = doc.get("head_node_type")
    out = []
    for name, spec in types.items():
        spec = spec or {}
        head = name == head_name
        res = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        out.append(NodeType(name, res, max_workers=0 if head else int(spec.get("max_workers", 0)),
                            min_workers=0 if head else int(spec.get("min_workers", 0)), head=head))
    cap = doc.get("max_workers") if "available_node_types" in doc else None
    return Cluster(source, tuple(out), int(cap) if cap is not None else None)


def k8s_quantity(value: Any) -> float:
    """A Kubernetes quantity ("8", "500m", 2) as a number, rounded up as KubeRay's autoscaler does."""
    text = str(value).strip()
    if text.endswith("m"):
        return float(math.ceil(float(text[:-1]) / 1000))
    return float(math.ceil(float(text)))


def _start_param_resources(text: Any) -> dict[str, float]:
    # rayStartParams.resources is a JSON object inside a quoted string: '"{\"train\": 8}"'.
    raw = str(text).strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1].replace('\\"', '"')
    return {str(k): float(v) for k, v in json.loads(raw).items()}


def group_resources(group: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """One KubeRay group's Ray resources, by the rules of KubeRay's autoscaler (Ray 2.60,
    autoscaler/_private/kuberay/autoscaling_config.py): the group's ``resources`` field first, then
    ``rayStartParams`` (num-cpus, num-gpus, resources JSON), then the Ray container's limits (or
    requests) for cpu and ``*/gpu``. That autoscaler adds no ``accelerator_type:`` resource for a
    GPU product selector: the GPU model is returned as a label, and a group must declare the
    resource for requests that name it to scale the group up."""
    top = group.get("resources") or {}
    params = group.get("rayStartParams") or {}
    container = ((group.get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    k8s = container.get("resources") or {}
    limits, requests = k8s.get("limits") or {}, k8s.get("requests") or {}
    res: dict[str, float] = {}
    if "CPU" in top:
        res["CPU"] = k8s_quantity(top["CPU"])
    elif "num-cpus" in params:
        res["CPU"] = float(int(params["num-cpus"]))
    elif "cpu" in limits or "cpu" in requests:
        res["CPU"] = k8s_quantity(limits.get("cpu", requests.get("cpu")))
    if "GPU" in top:
        res["GPU"] = k8s_quantity(top["GPU"])
    elif "num-gpus" in params:
        res["GPU"] = float(int(params["num-gpus"]))
    else:
        gpu = next((v for k, v in [*limits.items(), *requests.items()] if str(k).endswith("gpu")), None)
        if gpu is not None and k8s_quantity(gpu) > 0:
            res["GPU"] = k8s_quantity(gpu)
    if top:
        res.update({k: k8s_quantity(v) for k, v in top.items() if k not in ("CPU", "GPU", "TPU", "memory")})
    elif "resources" in params:
        res.update(_start_param_resources(params["resources"]))
    selector = ((group.get("template") or {}).get("spec") or {}).get("nodeSelector") or {}
    labels = {"gpu": str(selector[k]) for k in selector if str(k).endswith("gpu.product")}
    return res, labels


def cluster_from_kuberay(spec: Mapping[str, Any], source: str = "RayCluster") -> Cluster:
    """A RayCluster ``spec`` (or a RayJob's ``spec.rayClusterSpec``): the head group and every
    worker group (``maxReplicas`` x ``numOfHosts`` nodes)."""
    head_res, head_labels = group_resources(spec.get("headGroupSpec") or {})
    types = [NodeType("head", head_res, max_workers=0, head=True, labels=head_labels)]
    for g in spec.get("workerGroupSpecs") or []:
        res, labels = group_resources(g)
        hosts = int(g.get("numOfHosts", 1))
        types.append(NodeType(g["groupName"], res, max_workers=int(g.get("maxReplicas", g.get("replicas", 0))) * hosts,
                              min_workers=int(g.get("minReplicas", 0)) * hosts, labels=labels))
    return Cluster(source, tuple(types))


def _documents(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def load_cluster(path: str | Path) -> Cluster:
    """A cluster definition file: autoscaler YAML, RayCluster, or RayJob (its ``rayClusterSpec``, or
    the RayCluster its ``clusterSelector`` names, looked up among the manifests next to it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such cluster definition file", key="--cluster")
    for doc in _documents(path):
        kind = doc.get("kind")
        if "available_node_types" in doc:
            return cluster_from_autoscaler(doc, str(path))
        if kind == "RayCluster":
            return cluster_from_kuberay(doc.get("spec") or {}, f"{path} (RayCluster {doc['metadata']['name']})")
        if kind == "RayJob":
            spec = doc.get("spec") or {}
            if spec.get("rayClusterSpec"):
                return cluster_from_kuberay(spec["rayClusterSpec"], f"{path} (RayJob rayClusterSpec)")
            name = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
            if name:
                return _selected_cluster(path, name)
    raise ConfigError(f"{path}: neither a Ray autoscaler config (available_node_types) nor a KubeRay "
                      "RayCluster/RayJob manifest", key="--cluster")


def _selected_cluster(job_path: Path, name: str) -> Cluster:
    for other in sorted(job_path.parent.glob("*.y*ml")):
        for doc in _documents(other):
            if doc.get("kind") == "RayCluster" and (doc.get("metadata") or {}).get("name") == name:
                return cluster_from_kuberay(doc.get("spec") or {},
                                            f"{job_path} (clusterSelector -> {other.name} RayCluster {name})")
    raise ConfigError(f"{job_path}: clusterSelector names RayCluster {name!r}, which no manifest in "
                      f"{job_path.parent} defines; check against that RayCluster's manifest instead", key="--cluster")


def cluster_from_node_groups(groups: Iterable[Any], source: str = "live cluster") -> Cluster:
    """What a live cluster's autoscaler published to the GCS (Ray's ``ClusterConfig`` proto:
    ``node_group_configs`` with name, resources, min_count, max_count; -1 = unlimited)."""
    types = []
    for g in groups:
        n = int(g.max_count)
        types.append(NodeType(str(g.name), {str(k): float(v) for k, v in dict(g.resources).items()},
                              max_workers=UNLIMITED if n < 0 else n, min_workers=int(g.min_count)))
    return Cluster(source, tuple(types))


def live_cluster() -> Cluster | None:
    """The connected Ray cluster's node types, or None when it does not say.

    Ray 2.60 reads them from two places: the autoscaler ``ClusterConfig`` in the GCS KV
    (``ray._private.state.state.get_cluster_config()``, namespace ``__autoscaler``, key
    ``__autoscaler_cluster_config``; published by platforms that report it, not by 2.60's own
    monitor), and the file the head's autoscaler runs from on a ``ray up`` cluster
    (``~/ray_bootstrap_config.yaml``; a job's driver runs on the head). KubeRay's autoscaler reads
    the RayCluster object and publishes neither: there pass the manifest (``--cluster``)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None and config.node_group_configs:
            return cluster_from_node_groups(config.node_group_configs, "live cluster (GCS cluster config)")
    except Exception:  # noqa: BLE001 - an older/newer Ray or no GCS access: fall back, never fail a run
        pass
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if bootstrap.is_file():
        try:
            return cluster_from_autoscaler(_documents(bootstrap)[0], f"live cluster ({bootstrap})")
        except Exception:  # noqa: BLE001
            return None
    return None


def cluster_has_gpus(cluster: Cluster | None) -> bool:
    """Whether any node the cluster has or can add offers GPUs (``device: auto`` / ``use_gpu``
    then mean GPU even while no GPU node is alive yet)."""
    return cluster is not None and any(t.resources.get("GPU", 0) > 0 and t.max_nodes > 0 for t in cluster.node_types)


def gpus_for_auto(alive_gpus: float, cluster: Cluster | None) -> bool:
    """What ``vllm.device: auto`` and an unset ``train.use_gpu`` resolve to: GPUs alive now, or
    node types that can add them (an autoscaling cluster whose GPU nodes scale from zero)."""
    return alive_gpus > 0 or cluster_has_gpus(cluster)


def connected_cluster_has_gpus() -> bool:
    """:func:`gpus_for_auto` for the connected Ray cluster (False when Ray is not up)."""
    import ray

    if not ray.is_initialized():
        return False
    return gpus_for_auto(ray.cluster_resources().get("GPU", 0), live_cluster())


# -- requests ------------------------------------------------------------------------------------

def _min_actors(concurrency: int | Sequence[int], fixed_int: bool) -> int:
    if isinstance(concurrency, (list, tuple)):
        return int(concurrency[0])
    # ray.data.llm autoscales an int n as 1..n; our actor pools take an int as a fixed size.
    return int(concurrency) if fixed_int else 1


def vllm_request(opts, stage: str, what: str, key: str, gpus_known: bool) -> Request:
    """One engine of a vLLM generator, as persodpo.generate.vllm_backend.processor_config asks for
    it: a placement group of tensor x pipeline parallel bundles ({GPU: 1, CPU: cpus_per_worker} +
    resources on GPU; {CPU} + resources on CPU), each with Ray's accelerator_type share. One tensor
    parallel group shares a node (across nodes it runs over the network, if at all), so each
    pipeline stage is one bundle of its tensor parallel workers here."""
    device = opts.device if opts.device != "auto" else ("gpu" if gpus_known or opts.accelerator_type else "cpu")
    worker: dict[str, float] = {"CPU": float(opts.cpus_per_worker), **{k: float(v) for k, v in opts.resources.items()}}
    if device == "gpu":
        worker = {"GPU": 1.0, **worker}
    if opts.accelerator_type:
        worker[ACCELERATOR_PREFIX + opts.accelerator_type] = ACCELERATOR_SHARE
    tp = opts.tensor_parallel_size
    stage_bundle = {k: v * tp for k, v in worker.items()}
    keys = {"GPU": f"{key}.tensor_parallel_size" if tp > 1 else f"{key}.device",
            "CPU": f"{key}.cpus_per_worker"}
    keys.update({k: f"{key}.resources" for k in opts.resources})
    if opts.accelerator_type:
        keys[ACCELERATOR_PREFIX + opts.accelerator_type] = f"{key}.accelerator_type"
    return Request(stage, what, key, tuple(dict(stage_bundle) for _ in range(opts.pipeline_parallel_size)),
                   count=_min_actors(opts.concurrency, fixed_int=False), count_key=f"{key}.concurrency",
                   resource_keys=keys)


def _api_request(ep, stage: str, what: str, key: str) -> Request:
    return Request(stage, what, key, ({"CPU": float(ep.num_cpus)},), count=_min_actors(ep.concurrency, fixed_int=True),
                   count_key=f"{key}.concurrency", resource_keys={"CPU": f"{key}.num_cpus"})


def _metric_requests(metrics_cfg, stage: str, key: str) -> list[Request]:
    """Model metrics' actor pools (one per model and device settings, as the score stage groups
    them): {CPU: num_cpus, GPU: num_gpus} per actor, ``concurrency`` min actors."""
    from persodpo.score.metric import MODEL
    from persodpo.score.registry import REGISTRY

    pools: dict[tuple, tuple[int, list[str]]] = {}
    for i, spec in enumerate(metrics_cfg):
        cls = REGISTRY.get(spec.name)
        if cls is None or cls.kind != MODEL:
            continue
        conc = tuple(spec.concurrency) if isinstance(spec.concurrency, (list, tuple)) else spec.concurrency
        pool = (cls.family, spec.model or cls.default_model, spec.num_cpus, spec.num_gpus, conc, spec.batch_size)
        pools.setdefault(pool, (i, []))[1].append(spec.name)
    out: list[Request] = []
    for (_, model, cpus, gpus, _, _), (i, names) in pools.items():
        spec = metrics_cfg[i]
        bundle = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
        out.append(Request(stage, f"model metric {' + '.join(names)} ({model})", f"{key}.{i}", (bundle,),
                           count=_min_actors(spec.concurrency, fixed_int=True), count_key=f"{key}.{i}.concurrency",
                           resource_keys={"GPU": f"{key}.{i}.num_gpus", "CPU": f"{key}.{i}.num_cpus"}))
    return out


def train_resources(train, gpus_known: bool) -> tuple[bool, dict[str, float]]:
    """(use_gpu, resources per worker) as persodpo.train.stage asks Ray Train for them; an unset
    ``use_gpu`` follows the cluster's node types; Ray Train adds GPU: 1 under use_gpu."""
    use_gpu = train.use_gpu if train.use_gpu is not None else gpus_known
    res = dict(train.resources_per_worker or ({"CPU": 1, "GPU": 1} if use_gpu else {"CPU": 1}))
    if use_gpu:
        res.setdefault("GPU", 1)
    return use_gpu, {k: float(v) for k, v in res.items() if v}


def requests_of(cfg: "PersoDPOConfig", cluster: Cluster | None, stages: Iterable[str] | None = None) -> list[Request]:
    """Every resource request the stages of ``cfg`` make (in ``stages``, default run.stages)."""
    from persodpo.score.heldout import evaluation_judges, evaluation_metrics

    stages = list(stages if stages is not None else cfg.run.stages)
    gpus = cluster_has_gpus(cluster)
    out: list[Request] = []
    if "generate" in stages:
        for i, g in enumerate(cfg.generate.generators):
            key = f"generate.generators.{i}"
            if g.backend == "vllm":
                out.append(vllm_request(g.vllm_options, "generate", f"vLLM engine of {g.name}", f"{key}.vllm", gpus))
            else:
                out.append(_api_request(g.endpoint(), "generate", f"API actors of {g.name}", f"{key}.api"))
    if "score" in stages:
        out += _metric_requests(cfg.score.metrics, "score", "score.metrics")
        out += [_api_request(j, "score", f"judge actors of {j.name}", f"score.judges.{i}")
                for i, j in enumerate(cfg.score.judges)]
    if "train" in stages:
        t = cfg.train
        _, res = train_resources(t, gpus)
        keys = {k: "train.resources_per_worker" for k in res}
        if t.resources_per_worker is None:
            keys["GPU"] = "train.use_gpu"
        out.append(Request("train", f"{t.num_workers} train workers (Ray Train)", "train.resources_per_worker",
                           tuple(dict(res) for _ in range(t.num_workers)), count_key="train.num_workers",
                           resource_keys=keys))
    if "evaluate" in stages:
        e = cfg.evaluate
        n_models = int(e.include_base) + int(bool(e.input) or "train" in stages) + len(e.baselines)
        if e.engine == "vllm" and n_models:
            idx = next((i for i, g in enumerate(cfg.generate.generators) if g.backend == "vllm"), None)
            from persodpo.generate.config import VllmOptions

            opts = cfg.generate.generators[idx].vllm_options if idx is not None else VllmOptions()
            key = f"generate.generators.{idx}.vllm" if idx is not None else "evaluate.engine"
            r = vllm_request(opts, "evaluate", f"vLLM engines of the {n_models} evaluated model(s)", key, gpus)
            # Each evaluated model is its own generator branch, streaming together.
            out.append(Request(r.stage, r.what, r.key, r.bundles, r.count * n_models, r.count_key, r.resource_keys))
        mkey = "evaluate.metrics" if e.metrics is not None else "score.metrics"
        out += _metric_requests(evaluation_metrics(e.metrics, cfg.score.metrics), "evaluate", mkey)
        jkey = "evaluate.judges" if isinstance(e.judges, list) else "score.judges"
        out += [_api_request(j, "evaluate", f"judge actors of {j.name}", f"{jkey}.{i}")
                for i, j in enumerate(evaluation_judges(e.judges, cfg.score.judges))]
    return out


# -- fitting -------------------------------------------------------------------------------------

def fits(bundle: Mapping[str, float], resources: Mapping[str, float]) -> bool:
    return all(v <= EPS or resources.get(k, 0.0) + EPS >= v for k, v in bundle.items())


def _size(res: Mapping[str, float]) -> tuple:
    return (res.get("GPU", 0.0), res.get("CPU", 0.0), sum(v for k, v in res.items() if k not in ("GPU", "CPU")))


def pack(bundles: Sequence[Mapping[str, float]], cluster: Cluster) -> Counter | None:
    """Nodes per type that hold all ``bundles`` at once (greedy first-fit, largest bundle first,
    new nodes of the smallest type that holds the bundle), within ``max_workers``; None if they do
    not fit. Greedy can be conservative in contrived mixes; it never says yes wrongly."""
    nodes: list[tuple[NodeType, dict[str, float]]] = []
    used: Counter = Counter()
    for b in sorted(bundles, key=_size, reverse=True):
        for _, free in nodes:
            if fits(b, free):
                break
        else:
            workers = sum(n for name, n in used.items() if not _type(cluster, name).head)
            room = [t for t in cluster.node_types if fits(b, t.resources) and used[t.name] < t.max_nodes
                    and (t.head or cluster.max_workers is None or workers < cluster.max_workers)]
            if not room:
                return None
            t = min(room, key=lambda t: _size(t.resources))
            used[t.name] += 1
            free = dict(t.resources)
            nodes.append((t, free))
        for k, v in b.items():
            free[k] = free.get(k, 0.0) - v
    return used


def _type(cluster: Cluster, name: str) -> NodeType:
    return next(t for t in cluster.node_types if t.name == name)


def _placement(used: Counter) -> str:
    return ", ".join(f"{n} x {name}" for name, n in sorted(used.items()))


def check_request(r: Request, cluster: Cluster) -> Check:
    """One request: a bundle fits some node type, and its minimum pool fits within max_workers."""
    name = f"{r.stage}: {r.what}"
    for b in r.bundles:
        holders = [t for t in cluster.node_types if fits(b, t.resources)]
        if holders:
            continue
        # Blame what the closest node type lacks (fewest short resources): the accelerator type,
        # the GPU count of a tensor parallel group, a custom resource.
        lacks = {t.name: [k for k, v in b.items() if v > EPS and t.resources.get(k, 0.0) + EPS < v]
                 for t in cluster.node_types}
        closest = min(cluster.node_types, key=lambda t: (len(lacks[t.name]), t.head))
        short = lacks[closest.name]
        key = next((r.resource_keys[k] for k in short if k in r.resource_keys), r.key)
        why = ", ".join(f"{k}: {_num(b[k])} (it has {_num(closest.resources.get(k, 0))})" for k in short)
        hint = ""
        if any(k.startswith(ACCELERATOR_PREFIX) for k in short):
            offered = sorted({k for t in cluster.node_types for k in t.resources if k.startswith(ACCELERATOR_PREFIX)})
            hint = (f"; accelerator types the node types declare: {', '.join(offered) or 'none'} (a node type "
                    "must declare accelerator_type:<X> in its resources for the autoscaler to add it)")
        unit = "engine" if "vLLM" in r.what and len(r.bundles) == 1 else "bundle"
        return Check(name, False, f"requests {format_resources(b)} per {unit}, which no node type of {cluster.source} "
                                  f"holds (closest, {closest.name}, is short of {why}){hint}; node types: "
                                  f"{cluster.describe()}", key)
    used = pack([b for _ in range(r.count) for b in r.bundles], cluster)
    if used is None:
        holders = [t for t in cluster.node_types if all(fits(b, t.resources) for b in r.bundles)]
        return Check(name, False, f"requests {r.describe()}, more than the node types that hold it can offer "
                                  f"together ({', '.join(t.describe() for t in holders)}"
                                  + (f", cluster max_workers {cluster.max_workers}" if cluster.max_workers else "")
                                  + f"); node types: {cluster.describe()}", r.count_key or r.key)
    return Check(name, True, f"{r.describe()} fits: {_placement(used)}")


def check_stage_together(stage: str, requests: Sequence[Request], cluster: Cluster) -> Check | None:
    """The minimum pools of one stage stream together (Ray Data runs every operator at once)."""
    if len(requests) < 2:
        return None
    bundles = [b for r in requests for _ in range(r.count) for b in r.bundles]
    used = pack(bundles, cluster)
    name = f"{stage}: minimum pools together"
    if used is None:
        return Check(name, False, f"{len(requests)} pools stream together and their minimums ("
                                  + "; ".join(f"{r.what}: {r.describe()}" for r in requests)
                                  + f") do not fit at once; lower the minimum concurrency or add nodes; node types: "
                                  f"{cluster.describe()}", requests[0].count_key or requests[0].key)
    return Check(name, True, f"{len(requests)} pools at their minimum fit at once: {_placement(used)}")


def driver_local_checks(cfg: "PersoDPOConfig", cluster: Cluster, stages: Sequence[str]) -> list[Check]:
    """What only works next to the driver (persodpo.raycluster.driver_local_problems) on a
    cluster of several nodes or with an autoscaler, plus evaluate's transformers engine (a
    ``local:`` server on the driver, too)."""
    from persodpo.raycluster import driver_local_problems

    shape = {"nodes": sum(t.max_nodes for t in cluster.node_types),
             "autoscaler": any(t.max_workers > t.min_workers for t in cluster.node_types)}
    problems = driver_local_problems(cfg, shape)
    if "evaluate" in stages and cfg.evaluate.engine == "transformers" and (shape["nodes"] > 1 or shape["autoscaler"]):
        problems.append("evaluate.engine='transformers' serves the evaluated models from a local: server on the "
                        "driver's 127.0.0.1, which actors on the other nodes cannot reach; use evaluate.engine=vllm")
    return [Check("driver-local", False, p, p.split("=", 1)[0].replace("[", ".").replace("]", "")) for p in problems]


def check_feasibility(cfg: "PersoDPOConfig", cluster: Cluster, stages: Iterable[str] | None = None) -> list[Check]:
    """Every check of ``cfg`` against ``cluster``, passed or not (``persodpo check --cluster``)."""
    stages = list(stages if stages is not None else cfg.run.stages)
    checks: list[Check] = []
    if any(t.resources.get("CPU", 0) > 0 and t.max_nodes > 0 for t in cluster.node_types):
        checks.append(Check("cpu tasks", True, "Ray Data's tasks (reads, request building, writes) have CPU nodes"))
    else:
        checks.append(Check("cpu tasks", False, f"no node type of {cluster.source} offers CPUs: every stage's Ray Data "
                                                f"tasks would wait; node types: {cluster.describe()}", "--cluster"))
    requests = requests_of(cfg, cluster, stages)
    for r in requests:
        checks.append(check_request(r, cluster))
    for stage in dict.fromkeys(r.stage for r in requests):
        mine = [r for r in requests if r.stage == stage]
        if all(c.ok for c in checks if c.name.startswith(f"{stage}: ")):
            together = check_stage_together(stage, mine, cluster)
            if together is not None:
                checks.append(together)
    checks += train_placement_checks(cfg, cluster, stages)
    checks += driver_local_checks(cfg, cluster, stages)
    return checks


def train_placement_checks(cfg: "PersoDPOConfig", cluster: Cluster, stages: Sequence[str]) -> list[Check]:
    """A cluster that reserves node types for training (custom resource ``train``): train workers
    that do not ask for it may land on other GPU nodes (spot generator nodes: a reclaim kills a
    ZeRO-3 rank), so they must ask for it."""
    reserved = [t for t in cluster.node_types if t.resources.get("train", 0) > 0]
    if "train" not in stages or not reserved:
        return []
    _, res = train_resources(cfg.train, cluster_has_gpus(cluster))
    names = ", ".join(t.name for t in reserved)
    if res.get("train", 0) > 0:
        return [Check("train placement", True, f"train workers ask for the train resource: they run on {names}")]
    return [Check("train placement", False, f"train workers ask for {format_resources(res)} but not for the `train` "
                                            f"resource that reserves {names} for training: ranks may land on other "
                                            "(spot) GPU nodes; add train: 1 to train.resources_per_worker, e.g. "
                                            "{CPU: 8, GPU: 1, train: 1}", "train.resources_per_worker")]


def raise_if_infeasible(cfg: "PersoDPOConfig", cluster: Cluster, stages: Iterable[str] | None = None) -> list[Check]:
    """The checks; a ConfigError naming every failure (first failure's key) if any failed."""
    checks = check_feasibility(cfg, cluster, stages)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ConfigError(f"the config does not fit {cluster.source}: " +
                          "; ".join(f"{c.name} [{c.key}]: {c.detail}" for c in failed), key=failed[0].key)
    return checks
