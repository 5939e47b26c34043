"""One typed configuration for every stage, loaded from YAML with dotted overrides.

Each stage owns its section model (``persodpo/<stage>/config.py``); this module composes them
into :class:`PersoDPOConfig`. Unknown keys and wrong types are errors that name the dotted key.
No secrets live here: API keys and S3 credentials come from the environment only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from persodpo.errors import ConfigError
from persodpo.evaluate.config import EvaluateConfig
from persodpo.generate.config import GenerateConfig
from persodpo.ingest.config import IngestConfig
from persodpo.pairs.config import PairsConfig
from persodpo.rounds.config import RoundsSection
from persodpo.score.config import ScoreConfig
from persodpo.sections import Section
from persodpo.train.config import TrainConfig

__all__ = ["PersoDPOConfig", "RaySection", "StorageSection", "RunSection", "load_config",
           "apply_overrides", "section_hash", "Section"]

STAGES = ("ingest", "generate", "score", "pairs", "train", "evaluate")


class RaySection(Section):
    """Where Ray runs. No address (and no RAY_ADDRESS) means a local Ray started by us."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="local Ray only; default: os.cpu_count()")
    num_gpus: int | None = Field(None, ge=0, description="local Ray only")
    object_store_memory: int | None = Field(None, ge=78_643_200)
    namespace: str = "persodpo"
    include_dashboard: bool = False
    progress_bars: bool = True
    infeasible_timeout_s: float = Field(
        600.0, ge=0, description="a placement group or actor of a stage still pending after this long fails the "
                                 "stage naming the request (0: wait for ever); long enough for an autoscaler to "
                                 "add a node")
    actor_init_deaths: int = Field(
        3, ge=-1, description="actors of one operator that may die in a row while they start (a spot node lost while "
                              "a vLLM engine loads its model) and be replaced, before the stage fails; Ray Data's "
                              "own default, 0, fails the run on the first; -1: no limit")


class StorageSection(Section):
    """Object storage settings. Credentials are never configuration: use the AWS env variables."""

    endpoint_url: str | None = Field(None, description="S3 endpoint; default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")
    region: str | None = Field(None, description="default AWS_REGION / AWS_DEFAULT_REGION / us-east-1")
    connect_timeout_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(60.0, gt=0)
    retry_max_attempts: int = Field(5, ge=1)


class RunSection(Section):
    """Where `persodpo run` puts a run: ROOT/runs/RUN_ID/<stage>/ (ROOT local or s3://)."""

    root: str = "runs-root"
    run_id: str = "default"
    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    rounds: int = Field(1, ge=1, le=100, description="iterative DPO: round k+1 generates with round k's model, "
                                                     "trains on its own best-vs-worst replies (the rounds section)")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; known: {list(STAGES)}")
        return v


class PersoDPOConfig(Section):
    """The whole configuration. Every field has a default that runs offline on one machine."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    run: RunSection = Field(default_factory=RunSection)
    ray: RaySection = Field(default_factory=RaySection)
    storage: StorageSection = Field(default_factory=StorageSection)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    rounds: RoundsSection = Field(default_factory=RoundsSection)


def _parse_value(text: str) -> Any:
    # YAML scalars: "3" -> 3, "true" -> True, "[a, b]" -> list, "null" -> None.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides to a plain dict (list items by index: ``a.0.b=x``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError("override must look like key.path=value", key=item)
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"no list item {part!r}", key=here)
                node = node[int(part)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError("cannot set a field inside a scalar", key=here)
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"no list item {last!r}", key=key)
            node[int(last)] = _parse_value(raw)
        else:
            node[last] = _parse_value(raw)
    return data


def _errors_to_message(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(err.errors()) - 1
    return key, msg + (f" (and {more} more error(s))" if more else "")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PersoDPOConfig:
    """Load YAML (or defaults when ``path`` is None), apply dotted overrides, validate."""
    data: dict = {}
    file = str(path) if path else None
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config file not found", file=file)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid YAML: {exc}", file=file) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("top level must be a mapping of sections", file=file)
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return PersoDPOConfig.model_validate(data)
    except ValidationError as exc:
        key, msg = _errors_to_message(exc)
        raise ConfigError(msg, key=key, file=file) from None


def section_hash(cfg: PersoDPOConfig, stage: str, *, exclude: set[str] | None = None) -> str:
    """Deterministic hash of one stage's section (what decides whether its output is reusable)."""
    section = getattr(cfg, stage)
    payload = section.model_dump(mode="json", exclude=exclude or set())
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
