"""Data contracts between stages: Arrow schemas and deterministic ids (DESIGN.md section 2).

Ids are hashes of what identifies a row, so a rerun produces the same ids, skips work already
done and never duplicates a row.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPTS = pa.schema([
    ("prompt_id", pa.string()),
    ("source", pa.string()),
    ("dialog_id", pa.string()),
    ("turn", pa.int32()),
    ("split", pa.string()),
    ("persona", pa.list_(pa.string())),
    ("knowledge", pa.list_(pa.string())),
    ("history", MESSAGES),
    ("gold", pa.string()),
    # FoCus only: which persona sentences the gold reply is grounded on (null elsewhere).
    ("persona_grounding", pa.list_(pa.bool_())),
    ("landmark", pa.string()),
])

CANDIDATES = pa.schema([
    ("candidate_id", pa.string()),
    ("prompt_id", pa.string()),
    ("generator", pa.string()),
    ("sample_index", pa.int32()),
    ("raw", pa.string()),            # exact model output (null only when the request failed)
    ("text", pa.string()),           # extracted reply; null if unusable
    ("parse_ok", pa.bool_()),        # the requested format was followed
    ("parse_status", pa.string()),   # valid | fallback | unusable | error
    ("n_tokens", pa.int64()),
    ("latency_s", pa.float64()),
    ("error", pa.string()),
    ("template", pa.string()),       # prompt template version
])

# Scores: these base columns plus one float64 column per configured metric.
SCORES_BASE = pa.schema([
    ("candidate_id", pa.string()),
    ("prompt_id", pa.string()),
    ("generator", pa.string()),
    ("score_errors", pa.string()),   # JSON object {metric: reason} for null metrics, or null
    ("judge_tokens", pa.int64()),
    ("judge_cost_usd", pa.float64()),
])

PAIRS = pa.schema([
    ("pair_id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", MESSAGES),
    ("chosen", MESSAGES),
    ("rejected", MESSAGES),
    ("chosen_candidate_id", pa.string()),
    ("rejected_candidate_id", pa.string()),
    ("chosen_generator", pa.string()),
    ("rejected_generator", pa.string()),
    ("score_chosen", pa.float64()),
    ("score_rejected", pa.float64()),
    ("margin", pa.float64()),
    ("pair_type", pa.string()),      # content | format
    ("recipe", pa.string()),
])

SCHEMAS = {"prompts": PROMPTS, "candidates": CANDIDATES, "pairs": PAIRS, "scores": SCORES_BASE}


def _h(*parts: object) -> str:
    # \x1f (unit separator) cannot occur in our ids' parts, so ("a", "bc") != ("ab", "c").
    blob = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def prompt_id(source: str, dialog_id: str, turn: int) -> str:
    return "p_" + _h("prompt", source, dialog_id, int(turn))


def candidate_id(prompt_id: str, generator: str, sample_index: int = 0) -> str:
    return "c_" + _h("candidate", prompt_id, generator, int(sample_index))


def pair_id(recipe: str, chosen_candidate_id: str, rejected_candidate_id: str) -> str:
    return "d_" + _h("pair", recipe, chosen_candidate_id, rejected_candidate_id)


def scores_schema(metrics: list[str]) -> pa.Schema:
    """The scores schema for a given list of metric columns (float64, null = not computable)."""
    schema = SCORES_BASE
    for m in metrics:
        if m in schema.names:
            raise ValueError(f"metric column {m!r} clashes with a base column of the scores table")
        schema = schema.append(pa.field(m, pa.float64()))
    return schema


def conform(table: pa.Table, schema: pa.Schema, *, name: str = "table") -> pa.Table:
    """Reorder/cast ``table`` to ``schema``; extra columns are kept after the contract's.

    Raises ValueError naming the missing column, so a stage that forgot one fails loudly.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"{name}: missing contract column(s) {missing}")
    cols, fields = [], []
    for f in schema:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            col = col.cast(f.type)
        cols.append(col)
        fields.append(f)
    for n in table.column_names:
        if n not in schema.names:
            cols.append(table.column(n))
            fields.append(table.schema.field(n))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
