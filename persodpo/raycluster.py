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
    # Ray Core restarts a running actor lost with its node, but not one lost while it starts (its
    # creation task failed); Ray Data then fails the run unless this budget allows a replacement.
    from persodpo.config import RaySection

    ctx.max_consecutive_actor_init_deaths = (cfg or RaySection()).actor_init_deaths
    return ray


def on_driver_node():
    """Scheduling for the run's shared bookkeeping actors (rate limiters, budget ledgers): the
    driver's node, the head under `ray job submit`, never a spot worker that goes away with their
    state. Soft: a driver on a node that cannot host actors still gets them elsewhere."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)


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
    if cfg.run.rounds > 1 and cfg.rounds.policy_engine == "transformers":
        problems.append(f"rounds.policy_engine='transformers' serves each round's policy on the driver's 127.0.0.1, "
                        f"which actors on the other nodes of this cluster ({where}) cannot reach: use "
                        "rounds.policy_engine=vllm.")
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


def waiting_demands() -> list[dict]:
    """The resource bundles the connected cluster has not placed yet, as its autoscaler sees them
    (tasks, actors, placement group bundles); [] when the SDK cannot tell."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except Exception:  # noqa: BLE001 - an SDK that moved: no demands known, nothing is failed
        return []
    out = [dict(d.bundle) for a in demands.ray_task_actor_demand for d in a.bundles_by_count]
    for pg in demands.placement_group_demand:
        out += [dict(d.bundle) for d in pg.bundles_by_count]
    return out


def unplaceable(demands: list[dict], node_totals: list[dict], node_types: list[dict]) -> list[dict]:
    """The demands that fit neither the total resources of any alive node nor any node type the
    autoscaler can add: they wait for ever. (A demand that fits a busy node, or a type not started
    yet, only waits its turn.)"""
    from persodpo.feasibility import fits

    return [d for d in demands if not any(fits(d, r) for r in (*node_totals, *node_types))]


class PlacementWatchdog:
    """Fails a stage whose work cannot be placed, instead of letting it wait for ever.

    A request no node can hold (an ``accelerator_type`` the cluster lacks, more GPUs per engine
    than a node has, a custom resource no node type offers) leaves its actor or placement group
    pending for ever: Ray logs the autoscaler's complaint and the driver waits. This thread reads
    the cluster's waiting resource demands every ``interval_s``; one that fits no alive node and no
    node type the autoscaler can add (when the cluster says: ``persodpo.feasibility.live_cluster``)
    and is still waiting after ``timeout_s`` (long enough for a node to start) interrupts the stage,
    which then fails with a StageError naming the request and the nodes. A pool that asks for
    more actors than fit now only waits (its bundles fit a node). ``persodpo check --cluster``
    finds most of these before a run; this catches the rest."""

    # Set by the command line (its own process): a process whose stage was interrupted but does
    # not end is ended. Never in a caller's process (tests, notebooks).
    hard_exit = False

    def __init__(self, stage: str, timeout_s: float, interval_s: float = 5.0, command: str | None = None,
                 grace_s: float = 60.0):
        self.stage, self.timeout_s, self.interval_s = stage, timeout_s, interval_s
        self.command, self.grace_s = command or stage, grace_s
        self.first_seen: dict[str, float] = {}
        self.error: str | None = None
        self._stop = None
        self._thread = None
        self._types: list[dict] | None = None

    def _node_types(self) -> list[dict]:
        if self._types is None:
            from persodpo.feasibility import live_cluster

            cluster = live_cluster()
            self._types = [dict(t.resources) for t in cluster.node_types] if cluster else []
        return self._types

    def pending_work(self) -> list[str]:
        """This job's actors and placement groups that wait to be created (for the message)."""
        import ray
        from ray.util.placement_group import placement_group_table

        job = ray.get_runtime_context().get_job_id()
        out = [f"actor {a.get('ActorClassName')}" for a in ray._private.state.actors().values()
               if a.get("State") == "PENDING_CREATION" and a.get("JobID") == job]
        out += [f"placement group {pg_id[:12]}" for pg_id, pg in placement_group_table().items()
                if pg.get("state") == "PENDING" and pg_id.endswith(job)]  # a placement group id ends with its job's
        return sorted(set(out))

    def check(self, now: float) -> str | None:
        """The failure message once an unplaceable demand has waited past the timeout (else None)."""
        import ray

        totals = [{k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
                  for n in ray.nodes() if n.get("Alive")]
        stuck = {repr(sorted(d.items())): d for d in unplaceable(waiting_demands(), totals, self._node_types())}
        self.first_seen = {k: self.first_seen.get(k, now) for k in stuck}
        late = [stuck[k] for k, t in self.first_seen.items() if now - t >= self.timeout_s]
        if not late:
            return None
        shown = [{k: v for k, v in n.items() if not k.startswith(("memory", "object_store"))} for n in totals]
        return (f"{self.stage}: could not be placed for {self.timeout_s:.0f} s (ray.infeasible_timeout_s): "
                f"{', '.join(map(str, late[:5]))} fits no node ({'; '.join(self.pending_work()[:5]) or 'work'} "
                f"waits for it). Alive nodes offer {shown}. A request no node type can hold waits for ever: check "
                "the config against the cluster with `persodpo check --config C --cluster cluster/aws.yaml` and "
                "fix the request (accelerator_type, tensor_parallel_size, resources).")

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
                log.warning("placement watchdog could not read the cluster's demands: %s: %s", type(exc).__name__, exc)
                continue
            if message:
                self.error = message
                log.error("%s", message)
                _thread.interrupt_main()  # the stage's main thread waits inside Ray Data
                if not PlacementWatchdog.hard_exit:
                    return
                # In the CLI: if the process has not ended within grace_s (the interrupt swallowed,
                # or Ray's shutdown waiting for actors that were never placed), end it with the
                # error. Nothing was committed (a stage writes _SUCCESS last), so nothing is trusted.
                time.sleep(self.grace_s)
                import json
                import os
                import sys

                print(f"persodpo {self.command}: error: {message}", file=sys.stderr, flush=True)
                sys.stdout.write(json.dumps({"command": self.command, "ok": False, "error": message}) + "\n")
                sys.stdout.flush()
                os._exit(2)

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
