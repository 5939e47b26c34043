"""The metric registry: name -> metric class; adding a metric is one class and one line here.

Importing this module loads no model and no torch: model metrics import their frameworks when an
actor loads the model (``load_family``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from persodpo.score.compliance import FormatCompliance, LengthCompliance
from persodpo.score.embeddings import PersonaSimilarity
from persodpo.score.lexical import PersonaCoverage, ReferenceMetrics
from persodpo.score.metric import DETERMINISTIC, MODEL, Metric
from persodpo.score.nli import CoherenceNli, CScore
from persodpo.score.reward import RewardModelScore
from persodpo.score.unieval import CoherenceUniEval

if TYPE_CHECKING:
    from persodpo.score.config import ScoreConfig

REGISTRY: dict[str, type[Metric]] = {m.name: m for m in (
    FormatCompliance, LengthCompliance, PersonaCoverage, ReferenceMetrics,
    CScore, CoherenceNli, PersonaSimilarity, CoherenceUniEval, RewardModelScore,
)}

# Model family -> "module:function" that loads it (called once per actor).
LOADERS = {
    "nli": "persodpo.score.nli:load_nli",
    "embedding": "persodpo.score.embeddings:load_embedder",
    "seq2seq_yes_no": "persodpo.score.unieval:load_unieval",
    "reward": "persodpo.score.reward:load_reward_model",
}


def build_metrics(cfg: "ScoreConfig") -> list[Metric]:
    return [REGISTRY[spec.name](spec, cfg) for spec in cfg.metrics]


def load_family(family: str, source: str, num_gpus: float = 0.0, **kw: Any):
    module, _, fn = LOADERS[family].partition(":")
    return getattr(import_module(module), fn)(source, num_gpus=num_gpus, **kw)


def columns_of(metrics: list[Metric]) -> list[str]:
    cols: list[str] = []
    for m in metrics:
        for c in m.writes():
            if c in cols:
                raise ValueError(f"column {c!r} is written by two metrics")
            cols.append(c)
    return cols


def describe() -> list[dict]:
    """The registry as data (for docs and ``--help``-like listings)."""
    return [{"name": n, "kind": m.kind, "reads": list(m.reads), "description": m.description,
             **({"default_model": m.default_model} if m.kind == MODEL else {})}
            for n, m in sorted(REGISTRY.items())] if REGISTRY else []


__all__ = ["REGISTRY", "LOADERS", "build_metrics", "load_family", "columns_of", "describe", "DETERMINISTIC", "MODEL"]
