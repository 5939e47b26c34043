"""What every stage writes into ``_manifest.json`` besides its own counts.

Config hash and the stage's config section (which never holds secrets), the lineage (this
stage's config hash chained with the lineage of every output it read, see
:mod:`persodpo.lineage`), code and package versions (added by
:meth:`persodpo.storage.StageOutput.commit`), row/error counts, tokens, cost.
"""

from __future__ import annotations

from typing import Any

from persodpo import lineage
from persodpo import storage as st
from persodpo.config import PersoDPOConfig, section_hash


def upstream_uris(cfg: PersoDPOConfig, stage: str) -> dict[str, str]:
    """The outputs a stage reads, by role (ingest reads a source file instead: see below)."""
    if stage == "generate":
        return {"prompts": cfg.generate.input,
                **{f"reuse:{i}": uri for i, uri in enumerate(cfg.generate.reuse_from)}}
    if stage == "score":
        return {"candidates": cfg.score.input, "prompts": cfg.score.prompts}
    if stage == "pairs":
        return {"scores": cfg.pairs.input, "candidates": cfg.pairs.candidates, "prompts": cfg.pairs.prompts}
    if stage == "train":
        return {"pairs": cfg.train.input}
    if stage == "evaluate":
        return {"model": cfg.evaluate.input, "prompts": cfg.evaluate.prompts}
    return {}


def ingest_input(cfg: PersoDPOConfig) -> str:
    if cfg.ingest.input:
        return cfg.ingest.input
    from persodpo.ingest.stage import bundled_sample

    return bundled_sample()


def stage_models(cfg: PersoDPOConfig, stage: str) -> dict[str, str]:
    """The models a stage loads, by role: generate's generators, train's start and reference."""
    if stage == "generate":
        from persodpo.local_server import parse_local

        def source(g) -> str:  # a local: server's model is in its api_base, not in the litellm name
            local = parse_local(g.api_options.api_base) if g.backend == "api" else None
            return local[1] if local else g.model

        return {f"model:{g.name}": source(g) for g in cfg.generate.generators}
    if stage == "train":
        return {"model": cfg.train.model, **({"ref_model": cfg.train.ref_model} if cfg.train.ref_model else {})}
    return {}


def model_lineage(cfg: PersoDPOConfig, stage: str) -> dict[str, str]:
    """{role: lineage, role-weights: weights digest} of every model ``stage`` loads that a stage made
    (a train output: an iterative round's policy), so new weights recompute what the old made."""
    from persodpo.models import stage_model_lineage

    found: dict[str, str] = {}
    for role, source in stage_models(cfg, stage).items():
        lin = stage_model_lineage(source, cfg.storage)
        if lin:
            found[role] = lin["lineage"]
            found[role + ":weights"] = lin["weights"]
    return found


def upstream_lineage(cfg: PersoDPOConfig, stage: str) -> dict[str, str]:
    """{role: lineage hash} of what ``stage`` reads now (inputs that are not set are left out)."""
    if stage == "ingest":
        return {"input": lineage.input_fingerprint(ingest_input(cfg), cfg.storage)}
    return {**{role: lineage.of_output(uri, cfg.storage) for role, uri in upstream_uris(cfg, stage).items() if uri},
            **model_lineage(cfg, stage)}


def expected_lineage(cfg: PersoDPOConfig, stage: str) -> str:
    """The lineage hash an output of ``stage`` made now from the current inputs would have."""
    return lineage.chain(section_hash(cfg, stage), upstream_lineage(cfg, stage))["hash"]


def stage_manifest(cfg: PersoDPOConfig, stage: str, *, upstream: dict[str, str] | None = None,
                   **fields: Any) -> dict:
    h = section_hash(cfg, stage)
    return {
        "stage": stage,
        "config_hash": h,
        "config": getattr(cfg, stage).model_dump(mode="json"),
        "lineage": lineage.chain(h, upstream if upstream is not None else upstream_lineage(cfg, stage)),
        **fields,
    }


def is_current(uri: str, cfg: PersoDPOConfig, stage: str) -> bool:
    """True when ``uri`` is a complete output whose lineage equals what ``stage`` would make now."""
    if not st.is_complete(uri, cfg.storage):
        return False
    try:
        return lineage.of_output(uri, cfg.storage) == expected_lineage(cfg, stage)
    except Exception:  # noqa: BLE001 - an upstream that is gone or unreadable: not current
        return False
