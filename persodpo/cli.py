"""The ``persodpo`` command: one subcommand per stage, plus ``run`` (all stages in one Ray job).

    persodpo ingest   --source focus --input FoCus/train.json --output s3://bucket/prompts
    persodpo generate --config jobs/configs/tiny.yaml --input PROMPTS --output CANDIDATES
    persodpo score    --config C --input CANDIDATES --prompts PROMPTS --output SCORES
    persodpo pairs    --config C --input SCORES --candidates CANDIDATES --prompts PROMPTS --output PAIRS
    persodpo train    --config C --input PAIRS --output CHECKPOINTS --set train.zero_stage=3
    persodpo evaluate --config C --input CHECKPOINTS --output EVAL
    persodpo run      --run-id demo      (no --config: the embedded default, persodpo/data/demo.yaml)
    persodpo check    --config C         (whole-config checks, nothing runs)
    persodpo plan     [--config C]       (requests, tokens and cost per stage; nothing is sent)
    persodpo run      --config C --dry-run   (the same plan, and nothing runs)
    persodpo plan     --config C --pilot 200 (a real run on 200 prompts first: calibrated tokens, cost, time)
    persodpo check    --config C --cluster cluster/aws.yaml   (+ every resource request vs the node types)
    persodpo push     --input PAIRS --to hf:ORG/NAME [--dry-run]

Flags are shorthands for dotted overrides (``--output X`` is ``--set <stage>.output=X``).
Progress goes to stderr; the last line on stdout is one JSON summary. Exit code 0 only on
success; 2 for bad input or configuration (the message names file, record and field).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

STAGE_FLAGS: dict[str, list[tuple[str, str, dict]]] = {
    "ingest": [("--source", "source", {"choices": ["focus", "persobench", "persodpo-authors", "hf", "blended_skill_talk",
                                                      "personachat"]}),
               ("--input", "input", {}), ("--output", "output", {}), ("--split", "split", {}),
               ("--max-dialogs", "max_dialogs", {})],
    "generate": [("--input", "input", {}), ("--output", "output", {})],
    "score": [("--input", "input", {}), ("--prompts", "prompts", {}), ("--output", "output", {})],
    "pairs": [("--input", "input", {}), ("--candidates", "candidates", {}), ("--prompts", "prompts", {}),
              ("--output", "output", {}), ("--recipe", "recipe", {})],
    "train": [("--input", "input", {}), ("--output", "output", {})],
    "evaluate": [("--input", "input", {}), ("--output", "output", {})],
    "run": [("--run-id", "run_id", {}), ("--root", "root", {})],
    "check": [],
    "plan": [("--run-id", "run_id", {}), ("--root", "root", {})],
    "push": [("--input", "input", {}), ("--to", "to", {"metavar": "hf:ORG/NAME"}),
             ("--dry-run", "dry_run", {"action": "store_true"}), ("--private", "private", {"action": "store_true"}),
             ("--message", "message", {})],
}
HELP = {
    "ingest": "FoCus JSON / PersoBench CSV / the authors' data folder -> prompts",
    "generate": "prompts -> candidates (vLLM and API generators on Ray Data)",
    "score": "candidates -> scores (metrics and LLM judges)",
    "pairs": "scores -> DPO preference pairs + data card",
    "train": "pairs -> DPO fine-tuned model (TRL + DeepSpeed ZeRO on Ray Train)",
    "evaluate": "held-out generation, scoring and report",
    "run": "all stages in one Ray job under ROOT/runs/RUN_ID/ (no --config: the embedded default)",
    "check": "check a config as a whole (recipe columns, word limit, splits; with --cluster, every resource "
             "request against the cluster's node types) without running anything",
    "plan": "what a run will send and cost, per stage (rows, requests, tokens, USD), before any request",
    "push": "a pairs or train output folder -> a Hugging Face Hub repository (upload_folder)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persodpo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, flags in STAGE_FLAGS.items():
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
        p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set train.zero_stage=3 (repeatable)")
        p.add_argument("--log-level", default=os.environ.get("PERSODPO_LOG_LEVEL", "INFO"))
        for flag, key, kw in flags:
            p.add_argument(flag, dest=f"flag_{key}", **kw)
        if name in ("plan", "run"):  # not config keys: what to do with the config, not part of it
            p.add_argument("--pilot", type=int, metavar="N", help="first run ingest, generate, score and pairs for "
                           "real on N prompts (into ROOT/runs/RUN_ID-pilot; real requests) and calibrate reply tokens, "
                           "cost, wall time and train's size from it" + ("" if name == "plan" else " (with --dry-run)"))
            p.add_argument("--accelerator", metavar="NAME", help="the training GPUs (H100, A100, L4, ...; Ray's "
                           "accelerator type names) for train's GPU-hours in the plan")
            p.add_argument("--mfu", type=float, metavar="X", help="model FLOPs utilisation assumed for train's "
                           "GPU-hours (default 0.3)")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="print what the run would send and cost "
                           "(persodpo plan) and run nothing")
        if name == "check":  # not a config key: the cluster is not part of the run's configuration
            p.add_argument("--cluster", metavar="PATH", help="cluster definition to check the config against: a Ray "
                           "autoscaler YAML (cluster/aws.yaml) or a KubeRay RayCluster/RayJob manifest")
    return parser


def default_run_config() -> str:
    """The embedded default run (what `make demo` runs): bundled sample, packaged models, offline."""
    from importlib import resources

    return str(resources.files("persodpo") / "data" / "demo.yaml")


def _check(cfg, cluster_path: str | None = None) -> dict:
    from persodpo.check import check_config

    checks = check_config(cfg)
    cluster = None
    if cluster_path:
        from persodpo.feasibility import check_feasibility, load_cluster

        cluster = load_cluster(cluster_path)
        print(f"cluster {cluster.source}: {cluster.describe()}", file=sys.stderr)
        checks += check_feasibility(cfg, cluster)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" + (f" [{c.key}]" if c.key and not c.ok else ""),
              file=sys.stderr)
    failed = [c for c in checks if not c.ok]
    if failed:
        from persodpo.errors import ConfigError

        raise ConfigError(f"{len(failed)} of {len(checks)} checks failed: " +
                          "; ".join(f"{c.name}: {c.detail}" for c in failed), key=failed[0].key)
    return {"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            **({"cluster": cluster.source} if cluster else {})}


def _plan(cfg, pilot: int | None = None, accelerator: str | None = None, mfu: float | None = None) -> dict:
    from persodpo.errors import ConfigError
    from persodpo.plan import plan_run, render

    if pilot is not None and pilot < 1:
        raise ConfigError(f"--pilot must be a number of prompts >= 1, not {pilot}")
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f"--mfu is a share of the accelerator's peak, in (0, 1], not {mfu}")
    plans = plan_run(cfg, pilot=pilot, accelerator=accelerator, mfu=mfu)
    print(render(plans), file=sys.stderr)
    for p in plans[:-1]:
        _emit(p)
    return {"total": plans[-1]}


def _overrides(args: argparse.Namespace) -> list[str]:
    section = "run" if args.command in ("run", "plan") else args.command
    out = list(args.overrides)
    for key, value in vars(args).items():
        if key.startswith("flag_") and value is not None:
            out.append(f"{section}.{key[5:]}={value}")
    return out


def _emit(summary: dict) -> None:
    sys.stdout.write(json.dumps(summary, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _disconnect_ray(was_up: bool = False) -> None:
    """Ray forwards worker and raylet messages to this process's stdout until it disconnects: do it
    before the summary so the summary stays the last stdout line. A Ray that was already up when
    ``main`` was called (``main`` called in-process, e.g. by tests) is not ours to stop."""
    if _ray_is_up() and not was_up:
        sys.modules["ray"].shutdown()
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from persodpo import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from persodpo.errors import PersoDPOError

    t0 = time.time()
    ray_was_up = _ray_is_up()
    if argv is None:  # the command itself, in its own process (not a caller's main([...]))
        from persodpo.raycluster import PlacementWatchdog

        PlacementWatchdog.hard_exit = True

    try:
        from persodpo.config import load_config

        config = args.config or (default_run_config() if args.command in ("run", "check", "plan") else None)
        cfg = load_config(config, _overrides(args)) if args.command != "push" else None
        if args.command == "push":  # not a stage: publishes a finished output
            summary = importlib.import_module("persodpo.hub").push_command(args)
        elif args.command == "check":
            summary = _check(cfg, args.cluster)
        elif args.command == "plan" or (args.command == "run" and args.dry_run):
            summary = {**({"dry_run": True} if args.command == "run" else {}),
                       **_plan(cfg, args.pilot, args.accelerator, args.mfu)}
        elif args.command == "run" and args.pilot:
            from persodpo.errors import ConfigError

            raise ConfigError("--pilot calibrates a plan: use it with --dry-run (or persodpo plan)")
        elif args.command == "run":
            module = importlib.import_module("persodpo.pipeline")
            summary = module.run_pipeline(cfg)
        else:
            from persodpo.raycluster import PlacementWatchdog

            module = importlib.import_module(f"persodpo.{args.command}.stage")
            with PlacementWatchdog(args.command, cfg.ray.infeasible_timeout_s):
                summary = module.run_stage(cfg)
    except PersoDPOError as exc:
        _disconnect_ray(ray_was_up)
        print(f"persodpo {args.command}: error: {exc}", file=sys.stderr)
        _emit({"command": args.command, "ok": False, "error": str(exc), "wall_time_s": round(time.time() - t0, 2)})
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"persodpo {args.command}: interrupted", file=sys.stderr)
        return 130
    summary = {"command": args.command, "ok": True, **summary}
    summary.setdefault("wall_time_s", round(time.time() - t0, 2))
    _disconnect_ray(ray_was_up)
    _emit(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
