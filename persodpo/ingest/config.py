"""Configuration of the ingest stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persodpo.sections import Section

SOURCES = ("focus", "persobench", "persodpo-authors", "hf", "blended_skill_talk", "personachat")


class HFColumns(Section):
    """Which dataset column feeds each prompts-contract field (null: not in the data)."""

    persona: str = Field("persona", description="list of sentences, or one string (one sentence per line)")
    history: str = Field("history", description=(
        "list of strings (alternating turns, the last one the human's) or of {role, content} messages"))
    gold: str | None = Field("gold", description="the reference reply; null: no gold")
    knowledge: str | None = Field(None, description="list of strings or one string")
    dialog_id: str | None = Field(None, description="null: every row is its own dialog, id SPLIT-ROW")
    turn: str | None = Field(None, description="null: 1 + the assistant turns in the history")


class HFIngestConfig(Section):
    """``datasets.load_dataset(path, name, data_files=..., split=...)``: a hub id in production, or
    ``parquet``/``json``/``csv`` with local ``data_files`` offline."""

    path: str | None = Field(None, description="hub dataset id, local folder, or parquet/json/csv")
    name: str | None = Field(None, description="dataset configuration name")
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    split: str | list[str] = Field("train", description="split(s) to load; each keeps its name in the prompts")
    split_labels: dict[str, str] = Field(default_factory=lambda: {"validation": "valid"}, description=(
        "rename splits in the prompts (the pipeline holds out `valid` by default)"))
    columns: HFColumns = Field(default_factory=HFColumns)
    source_name: str = Field("hf", min_length=1, description="the prompts' `source` (and prompt-id namespace)")
    cache_dir: str | None = None


class IngestConfig(Section):
    source: Literal["focus", "persobench", "persodpo-authors", "hf", "blended_skill_talk", "personachat"] = "focus"
    input: str | None = Field(None, description="file, folder or URI; default: the bundled FoCus sample")
    output: str | None = None
    split: str = Field("train", description="split name written into every prompt row")
    knowledge: Literal["grounded", "all", "none"] = Field(
        "grounded", description="grounded: the knowledge sentence the gold reply used; all: the landmark's paragraphs")
    max_dialogs: int | None = Field(None, ge=1, description="keep the first N dialogs (debugging, demos)")
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description=(
        "share of dialogs (whole dialogs, chosen by a hash of the dialog id) whose prompts get split "
        "`holdout_split`, for held-out evaluation when the input has one split only"))
    holdout_split: str = Field("valid", min_length=1)
    rows_per_part: int = Field(50_000, ge=1)
    hf: HFIngestConfig = Field(default_factory=HFIngestConfig)
