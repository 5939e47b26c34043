"""``persodpo run``: every stage in one Ray job under ``ROOT/runs/RUN_ID/<stage>/``.

Each stage's inputs and outputs are wired to the run directory. A stage whose output is
complete (``_SUCCESS``) with the lineage it would have now (its config hash chained with the
lineage of what it reads, from the ingest input's content up: :mod:`persodpo.lineage`), and whose
upstream stages were all reused, is skipped; so a crashed run rerun with the same id continues
where it stopped, and a changed setting or input recomputes everything below it.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from persodpo import storage as st
from persodpo.config import STAGES, PersoDPOConfig
from persodpo.manifest import is_current

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
    """Complete, and made from exactly what the stage would read now with this config (lineage)."""
    uri = getattr(cfg, stage).output
    marker = st.join(uri, "prompts") if stage == "ingest" and cfg.ingest.source == "persodpo-authors" else uri
    return is_current(marker, cfg, stage)


def run_pipeline(cfg: PersoDPOConfig) -> dict:
    from persodpo.check import align_word_limits, raise_on_problems

    cfg = align_word_limits(wire(cfg))
    raise_on_problems(cfg)  # a config whose parts do not fit fails now, not after minutes of work
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a cluster: refuse what needs the driver's machine
        from persodpo.raycluster import init_ray, refuse_driver_local

        init_ray(cfg.ray, cfg.storage)
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
            log.info("%s: complete output with the same lineage, reusing %s", stage, getattr(cfg, stage).output)
            stages[stage] = {"status": "reused", "output": getattr(cfg, stage).output}
            continue
        upstream_reused = False
        log.info("%s: running -> %s", stage, getattr(cfg, stage).output)
        from persodpo.raycluster import PlacementWatchdog

        with PlacementWatchdog(stage, cfg.ray.infeasible_timeout_s, command="run"):
            summary = module.run_stage(cfg)
        stages[stage] = {"status": "ran", **summary}
    return {"run_dir": run_dir(cfg), "stages": stages, "wall_time_s": round(time.time() - t0, 2),
            "cost_usd": round(sum(float(s.get("cost_usd") or 0) for s in stages.values()), 6)}
