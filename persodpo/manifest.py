"""What every stage writes into ``_manifest.json`` besides its own counts.

Config hash and the stage's config section (which never holds secrets), code and package
versions (added by :meth:`persodpo.storage.StageOutput.commit`), row/error counts, tokens, cost.
"""

from __future__ import annotations

from typing import Any

from persodpo.config import PersoDPOConfig, section_hash


def stage_manifest(cfg: PersoDPOConfig, stage: str, **fields: Any) -> dict:
    return {
        "stage": stage,
        "config_hash": section_hash(cfg, stage),
        "config": getattr(cfg, stage).model_dump(mode="json"),
        **fields,
    }
