"""Configuration of the ingest stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from persodpo.sections import Section


class IngestConfig(Section):
    source: Literal["focus", "persobench", "persodpo-authors"] = "focus"
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
