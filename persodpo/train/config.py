"""Configuration of DPO training (TRL + DeepSpeed ZeRO under Ray Train)."""

from __future__ import annotations

from persodpo.sections import Section


class TrainConfig(Section):
    input: str | None = None
    output: str | None = None
