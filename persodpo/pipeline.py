"""``persodpo run``: every stage in one Ray job under ``ROOT/runs/RUN_ID/<stage>/``.

Each stage's inputs and outputs are wired to the run directory. A stage whose output is
complete (``_SUCCESS``) with the same config hash, and whose upstream stages were all reused,
is skipped; so a crashed run rerun with the same id continues where it stopped.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from persodpo import storage as st
from persodpo.config import STAGES, PersoDPOConfig, section_hash

log = logging.getLogger(__name__)


def run_dir(cfg: PersoDPOConfig) -> str:
    return st.join(cfg.run.root, "runs", cfg.run.run_id)


def wire(cfg: PersoDPOConfig) -> PersoDPOConfig:
    """A copy of ``cfg`` whose stage inputs/outputs point into the run directory."""
    cfg = cfg.model_copy(deep=True)
    if not st.is_s3(cfg.run.root):
        # Ray workers and servers run in other directories: a relative root would mean another place.
        cfg.run.root = os.path.abspath(cfg.run.root)
    base = run_dir(cfg)
    out = {s: st.join(base, s) for s in STAGES}
    authors = cfg.ingest.source == "persodpo-authors"
    prompts = st.join(out["ingest"], "prompts") if authors else out["ingest"]
    cfg.ingest.output = out["ingest"]
    cfg.generate.input, cfg.generate.output = prompts, out["generate"]
    cfg.score.input, cfg.score.prompts, cfg.score.output = out["generate"], prompts, out["score"]
    cfg.pairs.input, cfg.pairs.candidates, cfg.pairs.prompts, cfg.pairs.output = (
        out["score"], out["generate"], prompts, out["pairs"])
    cfg.train.input, cfg.train.output = out["pairs"], out["train"]
    cfg.evaluate.input, cfg.evaluate.output, cfg.evaluate.prompts = out["train"], out["evaluate"], prompts
    return cfg


def _reusable(cfg: PersoDPOConfig, stage: str) -> bool:
    uri = getattr(cfg, stage).output
    marker = st.join(uri, "prompts") if stage == "ingest" and cfg.ingest.source == "persodpo-authors" else uri
    if not st.is_complete(marker, cfg.storage):
        return False
    return st.read_manifest(marker, cfg.storage).get("config_hash") == section_hash(cfg, stage)


def run_pipeline(cfg: PersoDPOConfig) -> dict:
    cfg = wire(cfg)
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a cluster: refuse what needs the driver's machine
        from persodpo.raycluster import init_ray, refuse_driver_local

        init_ray(cfg.ray)
        refuse_driver_local(cfg)
    t0 = time.time()
    stages: dict[str, dict] = {}
    upstream_reused = True
    for stage in cfg.run.stages:
        try:
            module = importlib.import_module(f"persodpo.{stage}.stage")
        except ModuleNotFoundError as exc:
            if exc.name != f"persodpo.{stage}.stage":
                raise
            log.warning("stage %s is not implemented yet: stopping the run after the stages that exist", stage)
            stages[stage] = {"status": "not implemented yet"}
            break
        if upstream_reused and _reusable(cfg, stage):
            log.info("%s: complete output with the same config hash, reusing %s", stage, getattr(cfg, stage).output)
            stages[stage] = {"status": "reused", "output": getattr(cfg, stage).output}
            continue
        upstream_reused = False
        log.info("%s: running -> %s", stage, getattr(cfg, stage).output)
        summary = module.run_stage(cfg)
        stages[stage] = {"status": "ran", **summary}
    return {"run_dir": run_dir(cfg), "stages": stages, "wall_time_s": round(time.time() - t0, 2),
            "cost_usd": round(sum(float(s.get("cost_usd") or 0) for s in stages.values()), 6)}
