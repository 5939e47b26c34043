"""Configuration of the scoring stage (metrics and judges are configuration)."""

from __future__ import annotations

from persodpo.sections import Section


class ScoreConfig(Section):
    input: str | None = None
    prompts: str | None = None
    output: str | None = None
