"""Start or connect to Ray, the same way for every stage.

- ``ray.address`` in config or ``RAY_ADDRESS`` in the environment: connect (a cluster, or the
  job's own cluster under ``ray job submit``).
- Otherwise: start a local Ray with an explicit ``num_cpus`` (tests pass a small number and
  stop it afterwards).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ray.data

    from persodpo.config import RaySection, StorageSection

log = logging.getLogger(__name__)

# Set for every worker: offline-safe defaults that must hold on the cluster too.
_WORKER_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # litellm otherwise fetches prices at import
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def _job_env_vars() -> dict:
    """The env_vars of the runtime env of the Ray job this driver runs in ({} outside a job)."""
    import json

    # The job supervisor hands a submitted driver its job config under this name (Ray 2.x,
    # ray._private.runtime_env.constants); read by name so no private module is imported.
    text = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not text:
        return {}
    try:
        return dict((json.loads(text).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


def storage_env(storage: "StorageSection | None") -> dict[str, str]:
    """The object store's endpoint and region from the config, as the AWS variables every worker's
    S3 client reads (a model fetched on a node, a checkpoint written by a rank). Not secrets:
    keys stay in the nodes' own environment or instance profile."""
    env = {}
    if storage is not None and storage.endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = storage.endpoint_url
    if storage is not None and storage.region:
        env["AWS_REGION"] = storage.region
    return env


def init_ray(cfg: "RaySection | None" = None, storage: "StorageSection | None" = None):
    """Connect to (or start) Ray once per process; returns the ``ray`` module."""
    import ray

    for k, v in _WORKER_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return ray
    address = (cfg.address if cfg else None) or os.environ.get("RAY_ADDRESS")
    namespace = cfg.namespace if cfg else "persodpo"
    env_vars = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
    env_vars.update(storage_env(storage))
    # Under `ray job submit` the job's runtime env already reaches every worker, and Ray refuses a
    # driver runtime env that names one of its variables again.
    job_vars = _job_env_vars()
    env_vars = {k: v for k, v in env_vars.items() if k not in job_vars}
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, namespace=namespace, runtime_env={"env_vars": env_vars} if env_vars else None,
                 log_to_driver=True)
    else:
        num_cpus = (cfg.num_cpus if cfg and cfg.num_cpus else None) or os.cpu_count()
        kwargs = {}
        if cfg and cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
        if cfg and cfg.object_store_memory:
            kwargs["object_store_memory"] = cfg.object_store_memory
        log.info("starting a local Ray with num_cpus=%s", num_cpus)
        # address="local" always starts a new cluster, even when another Ray runs on this machine.
        ray.init(address="local", num_cpus=num_cpus, namespace=namespace, include_dashboard=bool(cfg and cfg.include_dashboard),
                 runtime_env={"env_vars": env_vars}, log_to_driver=True, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(cfg.progress_bars) if cfg else True
    return ray


def read_output(uri: str, storage: "StorageSection | None" = None, **kwargs) -> "ray.data.Dataset":
    """A complete stage output as a Ray Dataset (only the parts its manifest lists)."""
    import ray.data

    from persodpo import storage as st

    parts = st.part_uris(uri, storage)
    fs, _ = st.resolve(uri, storage)
    paths = [st.resolve(p, storage)[1] for p in parts]
    if not paths:
        raise ValueError(f"{uri}: the output is complete but has no rows")
    return ray.data.read_parquet(paths, filesystem=fs, **kwargs)


def cluster_shape() -> dict:
    """What the connected Ray cluster looks like for placement decisions: alive nodes, and whether
    its head offers no CPUs. Such a head runs no tasks: its work goes to worker nodes that an
    autoscaler adds (possibly none exist yet), which is how our clusters look (cluster/aws.yaml).
    (The autoscaler's KV status is no test: Ray's read-only monitor of a plain local Ray writes it
    too, and autoscaler v2 does not.)"""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    heads = [n for n in nodes if "node:__internal_head__" in (n.get("Resources") or {})]
    return {"nodes": len(nodes), "autoscaler": any(not h["Resources"].get("CPU") for h in heads)}


def driver_local_problems(cfg, shape: dict) -> list[str]:
    """What in ``cfg`` works only where every task runs next to the driver (one node, no
    autoscaler): a local ``run.root`` and ``local:``/``local+vllm:`` servers on 127.0.0.1."""
    from persodpo import storage as st
    from persodpo.local_server import parse_local

    if shape["nodes"] <= 1 and not shape["autoscaler"]:
        return []
    where = f"{shape['nodes']} node(s)"
    if shape["autoscaler"]:
        where += " and a head without CPUs (workers from an autoscaler)"
    problems = []
    if not st.is_s3(cfg.run.root):
        problems.append(f"run.root={cfg.run.root!r} is a local directory, but this Ray cluster has {where}: "
                        "workers on other nodes cannot read or write it. Put the run on object storage "
                        "(--root s3://BUCKET/PREFIX).")
    bases = [(f"generate.generators[{i}].api.api_base", g.api_options.api_base)
             for i, g in enumerate(cfg.generate.generators) if g.backend == "api"]
    bases += [(f"score.judges[{i}].api_base", j.api_base) for i, j in enumerate(cfg.score.judges)]
    for key, base in bases:
        if parse_local(base):
            problems.append(f"{key}={base!r} starts a server on the driver's 127.0.0.1, which actors on the "
                            f"other nodes of this cluster ({where}) cannot reach. Serve the open model with vLLM "
                            "on the cluster (e.g. a Ray Serve / vLLM OpenAI server) and set its URL here, or use "
                            "a vllm generator (backend: vllm).")
    return problems


def refuse_driver_local(cfg) -> None:
    """Refuse, before any work starts, a run that would fail or hang on a multi-node cluster."""
    from persodpo.errors import ConfigError

    problems = driver_local_problems(cfg, cluster_shape())
    if problems:
        raise ConfigError("this run depends on the driver's machine:\n  - " + "\n  - ".join(problems))


def waiting_demands() -> list[str]:
    """The resource requests the connected cluster cannot place now, as the autoscaler sees them."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except Exception:  # noqa: BLE001 - an SDK that moved: the message goes without them
        return []
    out = [f"{d.bundle} x{d.count}" for a in demands.ray_task_actor_demand for d in a.bundles_by_count]
    for pg in demands.placement_group_demand:
        out += [f"placement group {d.bundle} x{d.count}" for d in pg.bundles_by_count]
    return out


class PlacementWatchdog:
    """Fails a stage whose work cannot be placed, instead of letting it wait forever.

    A request no node type can hold (an ``accelerator_type`` the cluster lacks, more GPUs per
    engine than a node has) leaves its placement group or actor pending for ever: Ray logs the
    autoscaler's complaint and the driver waits. This thread looks at the job's pending placement
    groups and actors every ``interval_s``; one still pending after ``timeout_s`` (long enough for
    an autoscaler to start a node) interrupts the stage, which then fails with a StageError naming
    the request and the cluster's nodes. ``persodpo check --cluster`` finds most of these before a
    run; this catches the rest (a live cluster that differs from its definition)."""

    def __init__(self, stage: str, timeout_s: float, interval_s: float = 5.0):
        self.stage, self.timeout_s, self.interval_s = stage, timeout_s, interval_s
        self.first_seen: dict[str, float] = {}
        self.error: str | None = None
        self._stop = None
        self._thread = None

    def pending(self) -> dict[str, str]:
        """{id: what} for this job's placement groups and actors that wait to be placed."""
        import ray
        from ray.util.placement_group import placement_group_table

        job = ray.get_runtime_context().get_job_id()
        out = {}
        for pg_id, pg in placement_group_table().items():
            # A placement group id ends with its job's id.
            if pg.get("state") == "PENDING" and pg_id.endswith(job):
                bundles = [{k: v for k, v in b.items()} for b in (pg.get("bundles") or {}).values()]
                why = (pg.get("stats") or {}).get("scheduling_state", "pending")
                out["pg:" + pg_id] = f"placement group {pg_id[:12]} ({why}) of bundles {bundles}"
        for actor_id, a in ray._private.state.actors().items():
            if a.get("State") == "PENDING_CREATION" and a.get("JobID") == job:
                out["actor:" + actor_id] = f"actor {a.get('ActorClassName') or actor_id[:12]}"
        return out

    def check(self, now: float) -> str | None:
        """The failure message once something has waited past the timeout (else None)."""
        pending = self.pending()
        self.first_seen = {k: self.first_seen.get(k, now) for k in pending}
        late = [pending[k] for k, t in self.first_seen.items() if now - t >= self.timeout_s]
        if not late:
            return None
        import ray

        nodes = [{k: v for k, v in n["Resources"].items() if not k.startswith(("node:", "memory", "object_store"))}
                 for n in ray.nodes() if n.get("Alive")]
        return (f"{self.stage}: could not be placed for {self.timeout_s:.0f} s (ray.infeasible_timeout_s): "
                + "; ".join(late[:5]) + f"; the cluster waits for {waiting_demands() or 'resources'}. "
                f"Alive nodes offer {nodes}. A request no node type can hold waits "
                "for ever: check the config against the cluster with `persodpo check --config C --cluster "
                "cluster/aws.yaml` and fix the request (accelerator_type, tensor_parallel_size, resources).")

    def _run(self) -> None:
        import _thread
        import time

        import ray

        while not self._stop.wait(self.interval_s):
            if not ray.is_initialized():  # the stage connects to Ray itself, a moment after it starts
                continue
            try:
                message = self.check(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - a GCS hiccup must not fail the stage
                log.debug("placement watchdog: %s", exc)
                continue
            if message:
                self.error = message
                log.error("%s", message)
                _thread.interrupt_main()  # the stage's main thread waits inside Ray Data
                return

    def __enter__(self) -> "PlacementWatchdog":
        import threading

        if self.timeout_s and self.timeout_s > 0:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True, name="placement-watchdog")
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
        if self.error and exc_type is KeyboardInterrupt:
            from persodpo.errors import StageError

            raise StageError(self.error) from None
        return False
