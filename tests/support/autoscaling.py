"""An autoscaling Ray cluster on one machine: the real autoscaler (v2) with Ray's fake multi-node
provider, which starts a real raylet per "node" it launches (DESIGN.md section 7).

Ray 2.60's wheel lacks the fake provider's defaults file, so ``provider.type: fake_multinode`` and
``ray.cluster_utils.AutoscalingCluster`` (which also runs ``ray stop --force``) cannot be used:
the provider is named as an ``external`` module and the whole config is written here. The head
runs no tasks (``num_cpus=0``) and serves jobs; worker node types start at zero and go after
``idle_timeout_minutes``. Simulated nodes run in the head's process tree and share this
machine's files (the separate-files harness is tests/support/multinode.py). Stopped through the
head's process group, never ``ray stop``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.multinode import ClusterAddresses, _node_ports, _ray_start, _stop_group, node_process_env
from tests.support.ports import free_ports

HEAD_ID = "f" * 51 + "00000"   # the provider's fixed head node id
PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def scaled_node_types(cluster_yaml: str | Path, cpus: dict[str, int], max_workers: int = 2) -> dict:
    """The worker node types of a shipped cluster definition, sized for this machine: each type
    keeps its custom resources (``generate``, ``train`` ...) and its name; CPUs as given (types
    not in ``cpus`` are left out), no GPUs (CPU engines stand in), ``min_workers: 0``."""
    from persodpo.feasibility import load_cluster

    types = {}
    for t in load_cluster(str(cluster_yaml)).node_types:
        if t.name not in cpus:
            continue
        res = {k: v for k, v in t.resources.items()
               if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("accelerator_type")}
        types[t.name] = {"resources": {"CPU": cpus[t.name], **res, "object_store_memory": 150 * 2**20},
                         "node_config": {}, "min_workers": 0, "max_workers": min(max_workers, t.max_workers)}
    return types


class AutoscalingCluster(ClusterAddresses):
    def __init__(self, workdir: str | Path, node_types: dict, idle_timeout_minutes: float = 0.25,
                 env: dict | None = None):
        self.workdir = Path(workdir)
        self.node_types = node_types
        self.idle_timeout_minutes = idle_timeout_minutes
        self.env = dict(env or {})
        self.token = secrets.token_hex(16)
        self.head: subprocess.Popen | None = None

    def config(self) -> dict:
        return {
            "cluster_name": "persodpo-autoscaling-test",
            "max_workers": sum(t["max_workers"] for t in self.node_types.values()),
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "provider": {"type": "external", "module": PROVIDER, "launch_multiple": True, "head_node_id": HEAD_ID,
                         "gcs_address": self.gcs_address, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                                          "max_workers": 0},
                                     **self.node_types},
            "head_node_type": "ray.head.default",
            "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }

    def start(self, timeout: float = 300) -> "AutoscalingCluster":
        gcs, dash, client = free_ports(3)
        self.gcs_port, self.dashboard_port = gcs, dash
        cfg = self.workdir / "autoscaling.json"
        cfg.write_text(json.dumps(self.config()))
        cmd = [*_ray_start(), "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=0",
               "--num-gpus=0", f"--ray-client-server-port={client}", "--disable-usage-stats",
               f"--autoscaling-config={cfg}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash}", *_node_ports(gcs, dash, client)]
        env = node_process_env({**self.env, **self.client_env(), "RAY_FAKE_CLUSTER": "1",
                                "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
                                "RAY_CLOUD_INSTANCE_ID": HEAD_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": HEAD_ID})
        self.log_path = self.workdir / "head.log"
        self.head = subprocess.Popen(cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env, cwd=self.workdir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                return self
            if self.head.poll() is not None:
                raise RuntimeError(f"the autoscaling head exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the autoscaling head did not start in {timeout} s")

    def worker_nodes(self) -> dict[str, int]:
        """Worker nodes alive now, by node type: one raylet per node, in the head's process tree."""
        counts: dict[str, int] = {}
        if self.head is None:
            return counts
        try:
            procs = psutil.Process(self.head.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return counts
        for p in procs:
            try:
                if not p.cmdline() or not p.cmdline()[0].endswith("/raylet"):
                    continue
                node_type = p.environ().get("RAY_NODE_TYPE_NAME")
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if node_type and node_type != "ray.head.default":
                counts[node_type] = counts.get(node_type, 0) + 1
        return counts

    def stop(self) -> None:
        if self.head is not None:
            # The simulated nodes are in the head's process tree, not its group: collect them first.
            try:
                tree = psutil.Process(self.head.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            _stop_group(self.head)
            for p in tree:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.head = None
