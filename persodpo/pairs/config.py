"""Configuration of pair construction (recipes, weights, thresholds, caps)."""

from __future__ import annotations

from persodpo.sections import Section


class PairsConfig(Section):
    input: str | None = None
    candidates: str | None = None
    prompts: str | None = None
    output: str | None = None
    recipe: str = "persodpo"
