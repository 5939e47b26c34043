"""``persodpo run``: every stage in one Ray job under ``ROOT/runs/RUN_ID/<stage>/``.

Each stage's inputs and outputs are wired to the run directory. A stage whose output is
complete (``_SUCCESS``) with the lineage it would have now (its config hash chained with the
lineage of what it reads, from the ingest input's content up: :mod:`persodpo.lineage`), and whose
upstream stages were all reused, is skipped; so a crashed run rerun with the same id continues
where it stopped, and a changed setting or input recomputes everything below it.

With ``run.rounds: N`` > 1 (iterative DPO, :mod:`persodpo.rounds`) rounds 2..N follow round 1
under ``round-k/``, each generating with the previous round's model, and ``rounds/`` gets the
per-round report; reuse carries across rounds the same way (a stage that ran makes every later
stage, in this round and the next, run too).
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


def _run_stages(cfg: PersoDPOConfig, stages: list[str], upstream_reused: bool, label: str = "") -> tuple[dict, bool]:
    """Run (or reuse) ``stages`` of one round. Returns their summaries and whether all were reused."""
    out: dict[str, dict] = {}
    for stage in stages:
        try:
            module = importlib.import_module(f"persodpo.{stage}.stage")
        except ModuleNotFoundError as exc:
            if exc.name != f"persodpo.{stage}.stage":
                raise
            log.warning("stage %s is not implemented yet: stopping the run after the stages that exist", stage)
            out[stage] = {"status": "not implemented yet"}
            break
        if upstream_reused and _reusable(cfg, stage):
            log.info("%s%s: complete output with the same lineage, reusing %s", label, stage,
                     getattr(cfg, stage).output)
            out[stage] = {"status": "reused", "output": getattr(cfg, stage).output}
            continue
        upstream_reused = False
        log.info("%s%s: running -> %s", label, stage, getattr(cfg, stage).output)
        from persodpo.raycluster import PlacementWatchdog

        with PlacementWatchdog(stage, cfg.ray.infeasible_timeout_s, command="run"):
            summary = module.run_stage(cfg)
        out[stage] = {"status": "ran", **summary}
    return out, upstream_reused


def _cost(stages: dict) -> float:
    return sum(float(s.get("cost_usd") or 0) for s in stages.values())


def run_pipeline(cfg: PersoDPOConfig) -> dict:
    from persodpo.check import align_word_limits, raise_on_problems
    from persodpo.rounds.wiring import first_round

    cfg = align_word_limits(wire(cfg))
    raise_on_problems(cfg)  # a config whose parts do not fit fails now, not after minutes of work
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):  # a cluster: refuse what needs the driver's machine
        from persodpo.raycluster import init_ray, refuse_driver_local

        init_ray(cfg.ray, cfg.storage)
        refuse_driver_local(cfg)
    t0 = time.time()
    first = first_round(cfg)
    stages, reused = _run_stages(first, list(cfg.run.stages), True, "round 1: " if cfg.run.rounds > 1 else "")
    result = {"run_dir": run_dir(cfg), "stages": stages}
    if cfg.run.rounds > 1:
        result.update(run_rounds(cfg, first, stages, reused))
    cost = _cost(stages) + sum(_cost(r["stages"]) for r in result.get("rounds", [])[1:])
    return {**result, "wall_time_s": round(time.time() - t0, 2), "cost_usd": round(cost, 6)}


def run_rounds(cfg: PersoDPOConfig, first: PersoDPOConfig, stages: dict, reused: bool) -> dict:
    """Rounds 2..N of iterative DPO (persodpo.rounds), after round 1 (``first``, its ``stages``).
    A round whose stages are complete with the same lineage is reused like any stage."""
    from persodpo.errors import StageError
    from persodpo.rounds.report import write_report
    from persodpo.rounds.wiring import policy_model, round_config, round_dir

    rounds = [{"round": 1, "stages": stages}]
    prev, round_stages = first, [s for s in cfg.run.stages if s != "ingest"]
    for k in range(2, cfg.run.rounds + 1):
        if not st.is_complete(prev.train.output, cfg.storage):
            raise StageError(f"round {k} needs round {k - 1}'s trained model, but {prev.train.output} is not a "
                             "complete train output")
        model = policy_model(cfg, prev.train.output)
        rc = round_config(first, k, previous_model=model, original_model=cfg.train.model)
        log.info("round %d of %d: policy %s from %s", k, cfg.run.rounds, cfg.rounds.policy_name, model)
        done, reused = _run_stages(rc, round_stages, reused, f"round {k}: ")
        rounds.append({"round": k, "stages": done, "policy_model": model})
        prev = rc
    out: dict = {"rounds": rounds}
    if "evaluate" in cfg.run.stages:
        evaluations = [(r["round"], st.join(round_dir(run_dir(cfg), r["round"]), "evaluate")) for r in rounds]
        details = [_round_details(cfg, r["round"]) for r in rounds]
        out["rounds_report"] = write_report(st.join(run_dir(cfg), "rounds"), evaluations,
                                            base_name=cfg.evaluate.base_name, trained_name=cfg.evaluate.trained_name,
                                            details=details, storage=cfg.storage)
    return out


def _round_details(cfg: PersoDPOConfig, k: int) -> dict:
    """What round ``k`` was made of, for the report (read from its manifests: reused rounds too)."""
    from persodpo.rounds.wiring import round_dir

    base = round_dir(run_dir(cfg), k)
    d: dict = {"round": k}
    try:
        gen = st.read_manifest(st.join(base, "generate"), cfg.storage)
        d["candidates"] = {n: v.get("rows") for n, v in (gen.get("generators") or {}).items()}
        d["n_prompts"] = gen.get("n_prompts")
        pairs = st.read_manifest(st.join(base, "pairs"), cfg.storage)
        d["pairs"] = pairs.get("by_pair_type")
        train = st.read_manifest(st.join(base, "train"), cfg.storage)
        d["train_steps"] = train.get("global_step")
        d["loss"] = f"{train.get('first_loss')} -> {train.get('last_loss')}"
    except Exception as exc:  # noqa: BLE001 - a detail line is not worth failing the run for
        d["details"] = f"unreadable ({exc})"
    return d
