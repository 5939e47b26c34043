"""The pairs table -> TRL's conversational preference rows, checked first.

Pure functions over Arrow tables (unit-tested without Ray). :func:`check_pairs` runs on the
driver over every batch before any worker starts, so a bad pair fails the stage with a message
naming the Parquet part, the pair id and the field, instead of a stack trace from a worker.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from persodpo.errors import InputError

REQUIRED = ("pair_id", "prompt", "chosen", "rejected", "margin", "pair_type", "recipe")
ROLES = ("system", "user", "assistant")
PATH = "path"   # column added by ray.data.read_parquet(include_paths=True)
WEIGHT = "pair_weight"


@dataclass
class PairStats:
    """What the stage learns about its input while checking it (for the manifest and model card)."""

    rows: int = 0
    used: int = 0
    by_type: Counter = field(default_factory=Counter)
    recipes: Counter = field(default_factory=Counter)
    margin_min: float = math.inf
    margin_max: float = -math.inf
    margin_sum: float = 0.0
    margin_n: int = 0

    def as_dict(self) -> dict:
        return {"rows": self.rows, "used": self.used, "by_type": dict(self.by_type), "recipes": dict(self.recipes),
                "margin_min": None if self.margin_n == 0 else self.margin_min,
                "margin_max": None if self.margin_n == 0 else self.margin_max,
                "margin_mean": None if self.margin_n == 0 else self.margin_sum / self.margin_n}


def _check_messages(msgs, *, file, record, name: str, last_role: str | None) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise InputError("must be a non-empty list of {role, content} messages", file=file, record=record, field=name)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InputError(f"message {i} has role {m.get('role') if isinstance(m, dict) else m!r}; "
                             f"expected one of {list(ROLES)}", file=file, record=record, field=name)
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise InputError(f"message {i} has no text content", file=file, record=record, field=name)
    if last_role and msgs[-1]["role"] != last_role:
        raise InputError(f"the last message must have role {last_role!r}, not {msgs[-1]['role']!r}",
                         file=file, record=record, field=name)


def check_pairs(table: pa.Table, *, source: str, need_margin: bool, pair_types: list[str],
                stats: PairStats | None = None, row_offset: int = 0) -> PairStats:
    """Raise InputError on the first bad row; return (updated) statistics."""
    stats = stats if stats is not None else PairStats()
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"missing column(s) {missing}; is this a pairs stage output?", file=source,
                         field=missing[0])
    cols = {c: table.column(c).to_pylist() for c in REQUIRED}
    paths = table.column(PATH).to_pylist() if PATH in table.column_names else [source] * table.num_rows
    for i in range(table.num_rows):
        file = paths[i] or source
        record = cols["pair_id"][i] if cols["pair_id"][i] else f"row {row_offset + i}"
        ptype = cols["pair_type"][i]
        if ptype not in ("content", "format"):
            raise InputError(f"pair_type is {ptype!r}; expected 'content' or 'format'", file=file, record=record,
                             field="pair_type")
        stats.rows += 1
        stats.recipes[cols["recipe"][i]] += 1
        if ptype not in pair_types:
            continue
        _check_messages(cols["prompt"][i], file=file, record=record, name="prompt", last_role="user")
        _check_messages(cols["chosen"][i], file=file, record=record, name="chosen", last_role="assistant")
        _check_messages(cols["rejected"][i], file=file, record=record, name="rejected", last_role="assistant")
        margin = cols["margin"][i]
        if margin is None or not math.isfinite(margin):
            if need_margin:
                raise InputError("margin weighting needs a finite margin", file=file, record=record, field="margin")
        else:
            if need_margin and margin < 0:
                raise InputError(f"margin {margin} < 0: the rejected reply scored higher than the chosen one",
                                 file=file, record=record, field="margin")
            stats.margin_min = min(stats.margin_min, margin)
            stats.margin_max = max(stats.margin_max, margin)
            stats.margin_sum += margin
            stats.margin_n += 1
        stats.used += 1
        stats.by_type[ptype] += 1
    return stats


def training_rows(table: pa.Table, *, pair_types: list[str], weights_fn=None) -> pa.Table:
    """prompt/chosen/rejected (+ pair_weight) of the kept pair types, in pair_id order.

    Sorting by pair_id makes the row order (and so TRL's seeded shuffle) independent of how many
    Parquet parts or Ray blocks the pairs arrived in, so a restarted run sees the same batches.
    """
    mask = pc.is_in(table.column("pair_type"), value_set=pa.array(pair_types, pa.string()))
    kept = table.filter(mask).sort_by("pair_id")
    out = kept.select(["prompt", "chosen", "rejected"])
    if weights_fn is not None:
        # Weights are normalised within each pair type: their margins are on different scales.
        w = weights_fn(kept.column("margin").to_numpy(zero_copy_only=False),
                       groups=kept.column("pair_type").to_pylist())
        out = out.append_column(WEIGHT, pa.array(w, pa.float64()))
    return out
