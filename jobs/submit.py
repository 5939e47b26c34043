#!/usr/bin/env python
"""Submit ``persodpo run`` (or one stage) to a Ray cluster with ``ray job submit`` semantics.

    python jobs/submit.py --address http://127.0.0.1:8265 --config jobs/configs/focus_full.yaml \
        --run-id focus-full --root s3://my-bucket/persodpo [--stage generate] [--set k=v ...] \
        [--cluster cluster/aws.yaml]

The submission id is derived from the run id (``persodpo-<run>-<stage|run>``), so submitting the
same run again never starts a duplicate: a running job is followed, a finished one is reported,
and a failed or stopped one is resubmitted as ``...-r2``, ``-r3`` ... — and the run itself skips
every stage whose output is already complete with the same config hash, so it resumes.
Prints the job's logs while it runs and ends with one JSON line; exit code 0 only on SUCCEEDED.
With ``--cluster`` (the cluster's autoscaler YAML or KubeRay manifest), the config is first checked
against its node types (``persodpo check --cluster``): a request no node type can hold would wait
forever on the cluster, so it is refused here (exit 2) before anything is submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def submission_id(run_id: str, stage: str | None, attempt: int = 1) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"persodpo-{run_id}-{stage or 'run'}")
    return base if attempt == 1 else f"{base}-r{attempt}"


def entrypoint(args: argparse.Namespace, config_rel: str) -> str:
    cmd = ["python", "-m", "persodpo", args.stage or "run", "--config", config_rel]
    if args.stage is None:
        cmd += ["--run-id", args.run_id]
        if args.root:
            cmd += ["--root", args.root]
    for item in args.overrides:
        cmd += ["--set", item]
    return " ".join(shlex.quote(c) for c in cmd)


def runtime_env(path: str) -> dict:
    env = yaml.safe_load(Path(path).read_text()) or {}
    wd = env.get("working_dir")
    if wd and "://" not in wd:
        env["working_dir"] = str((REPO / wd).resolve()) if not os.path.isabs(wd) else wd
    return env


def _status(client, sid) -> str | None:
    try:
        status = client.get_job_status(sid)
    except RuntimeError:
        return None  # no such job
    return getattr(status, "value", str(status))


# What Ray's job server answers while the head's dashboard agent is still starting (a fresh head,
# or a head restarted by KubeRay): the submission was not taken, and Ray says to try again later.
TRANSIENT = ("No available agent", "please try again later")


def submit_with_retry(client, sid: str, *, wait_s: float = 180.0, sleep=time.sleep, **kwargs) -> str:
    """``client.submit_job`` that waits out a job server not yet ready to take jobs.

    Returns the status of a job with ``sid`` if one appeared meanwhile (never submits twice),
    else "SUBMITTED". Any other error, or the same one past ``wait_s``, is raised as is."""
    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            client.submit_job(submission_id=sid, **kwargs)
            return "SUBMITTED"
        except RuntimeError as exc:
            if not any(t in str(exc) for t in TRANSIENT) or time.monotonic() + delay > deadline:
                raise
            print(f"submit: job server not ready ({str(exc).strip()[:120]}); retrying in {delay:.0f} s",
                  file=sys.stderr)
        sleep(delay)
        delay = min(delay * 2, 15.0)
        existing = _status(client, sid)
        if existing is not None:
            return existing


def pick_submission(client, run_id: str, stage: str | None) -> tuple[str, str | None]:
    """(submission id to use, status of an existing job with that id or None)."""
    attempt = 1
    while True:
        sid = submission_id(run_id, stage, attempt)
        status = _status(client, sid)
        if status is None:
            return sid, None
        if status in ("FAILED", "STOPPED"):
            attempt += 1
            continue
        return sid, status  # PENDING / RUNNING: follow it; SUCCEEDED: report it


def _persodpo_importable() -> None:
    try:
        import persodpo  # noqa: F401
    except ImportError:  # run from a checkout without installing: the package is next to jobs/
        sys.path.insert(0, str(REPO))


def feasibility_problems(args: argparse.Namespace) -> list[str]:
    """The failed checks of the config (with this submission's overrides, root and stage) against
    the cluster definition ``args.cluster``; [] when it fits."""
    _persodpo_importable()
    from persodpo.config import load_config
    from persodpo.feasibility import check_feasibility, load_cluster

    overrides = list(args.overrides) + [f"run.run_id={args.run_id}"] + ([f"run.root={args.root}"] if args.root else [])
    cfg = load_config(args.config, overrides)
    cluster = load_cluster(args.cluster)
    checks = check_feasibility(cfg, cluster, [args.stage] if args.stage else None)
    return [f"{c.name} [{c.key}]: {c.detail}" for c in checks if not c.ok]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=os.environ.get("RAY_JOB_ADDRESS") or os.environ.get("RAY_ADDRESS")
                   or "http://127.0.0.1:8265", help="Ray job server (dashboard) address")
    p.add_argument("--config", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--root", help="run root (local path on the cluster, or s3://bucket/prefix)")
    p.add_argument("--stage", choices=["ingest", "generate", "score", "pairs", "train", "evaluate"])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--runtime-env", default=str(REPO / "cluster" / "runtime_env.yaml"))
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p.add_argument("--timeout", type=float, default=7 * 24 * 3600)
    p.add_argument("--cluster", metavar="PATH", help="check the config against this cluster definition (Ray "
                   "autoscaler YAML or KubeRay manifest) before submitting; refuse if it does not fit")
    args = p.parse_args(argv)

    if args.cluster:
        _persodpo_importable()
        from persodpo.errors import PersoDPOError

        try:
            problems = feasibility_problems(args)
        except PersoDPOError as exc:
            print(f"submit: {exc}", file=sys.stderr)
            return 2
        if problems:
            print(f"submit: not submitted: {args.config} does not fit {args.cluster}:\n  - " + "\n  - ".join(problems),
                  file=sys.stderr)
            return 2
        print(f"submit: {args.config} fits {args.cluster}", file=sys.stderr)

    from ray.job_submission import JobSubmissionClient

    env = runtime_env(args.runtime_env)
    cfg = Path(args.config).resolve()
    wd = Path(env.get("working_dir", REPO))
    try:
        config_rel = str(cfg.relative_to(wd)) if "://" not in str(wd) else args.config
    except ValueError:
        print(f"submit: {args.config} is outside the runtime_env working_dir {wd}", file=sys.stderr)
        return 2
    client = JobSubmissionClient(args.address)
    sid, status = pick_submission(client, args.run_id, args.stage)
    if status is None:
        outcome = submit_with_retry(client, sid, entrypoint=entrypoint(args, config_rel), runtime_env=env,
                                    metadata={"persodpo_run_id": args.run_id, "persodpo_stage": args.stage or "run"})
        print(f"submit: submitted {sid}" if outcome == "SUBMITTED" else
              f"submit: {sid} appeared while the job server was starting ({outcome}); following it", file=sys.stderr)
    else:
        print(f"submit: {sid} already exists ({status}); following it instead of submitting a duplicate",
              file=sys.stderr)
    if args.no_wait:
        print(json.dumps({"submission_id": sid, "status": _status(client, sid)}))
        return 0
    deadline = time.time() + args.timeout
    printed = 0
    status = _status(client, sid)
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(2)
        logs = client.get_job_logs(sid)
        sys.stderr.write(logs[printed:])
        printed = len(logs)
        status = _status(client, sid)
    logs = client.get_job_logs(sid)
    sys.stderr.write(logs[printed:])
    summary = None
    for line in reversed(logs.strip().splitlines()):
        if line.startswith("{") and '"command"' in line:
            try:
                summary = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    print(json.dumps({"submission_id": sid, "status": status, "summary": summary}))
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
