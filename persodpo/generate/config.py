"""Configuration of the generation stage (generators are configuration)."""

from __future__ import annotations

from pydantic import Field

from persodpo.sections import Section


class GenerateConfig(Section):
    input: str | None = None
    output: str | None = None
