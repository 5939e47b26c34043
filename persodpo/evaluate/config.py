"""Configuration of held-out evaluation and the report."""

from __future__ import annotations

from persodpo.sections import Section


class EvaluateConfig(Section):
    input: str | None = None
    output: str | None = None
