"""The candidate pool: candidates joined with their scores, one row per candidate.

Every recipe works on this frame (positions into it identify candidates), so input checks live
here once: missing columns, duplicate ids, scores for unknown candidates, non-numeric metrics.
Errors name the table's URI, the record (candidate id) and the field.

Built in Arrow and kept cheap at a million rows: string columns stay Arrow-backed (never
converted to Python objects wholesale), and what the recipes group, sort and hash on is
precomputed as numbers: ``pcode`` (prompt code, in prompt-id order), ``cid_hash`` /
``pid_hash`` (stable 64-bit hashes of the candidate and prompt ids), ``gcode`` (generator code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persodpo import storage as st
from persodpo.errors import InputError
from persodpo.words import word_counts

CANDIDATE_COLUMNS = ("candidate_id", "prompt_id", "generator", "raw", "text", "parse_ok", "parse_status")
CANDIDATE_OPTIONAL = ("template",)

# The authors'-data import labels its candidates with the instruction the authors used;
# persobench-json-v1 reproduces that instruction word for word.
TEMPLATE_ALIASES = {"persobench-json-authors": "persobench-json-v1"}

RESERVED = ("candidate_id", "prompt_id", "generator", "parse_status", "template", "text", "raw", "pcode", "gcode",
            "parse_ok", "has_text", "has_raw", "words", "fmt_score", "cid_hash", "pid_hash")


@dataclass
class Inputs:
    """The pool frame and where it came from (for error messages)."""

    pool: pd.DataFrame
    scores_uri: str = "scores"
    candidates_uri: str = "candidates"
    score_columns: tuple[str, ...] = ()
    generators: list[str] = field(default_factory=list)   # gcode -> generator name
    format_source: str = "candidates.parse_ok"             # where fmt_score came from


def read_columns(uri: str, storage, *, required: tuple[str, ...], optional: tuple[str, ...] = (),
                 all_columns: bool = False) -> pa.Table:
    """Read a complete stage output; InputError naming the URI and field for a missing column."""
    parts = st.part_uris(uri, storage)
    fs, _ = st.resolve(uri, storage)
    names = pq.read_schema(st.resolve(parts[0], storage)[1], filesystem=fs).names if parts else []
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"missing column (the table has {names})", file=uri, field=missing[0])
    cols = None if all_columns else [c for c in (*required, *optional) if c in names]
    return st.read_table(uri, storage, columns=cols)


def _table(x) -> pa.Table:
    if isinstance(x, pa.Table):
        return x
    return pa.Table.from_pandas(x, preserve_index=False)


def _check_unique(ids: pa.ChunkedArray, *, file: str) -> None:
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise InputError("duplicate candidate_id", file=file, record=dup, field="candidate_id")


def _hash(strings: pa.Array | pa.ChunkedArray) -> np.ndarray:
    # pandas' SipHash with its fixed default key: the same id hashes the same on every machine.
    return pd.util.hash_array(strings.to_numpy(zero_copy_only=False).astype(object), categorize=False)


def _coded(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, sorted distinct values): codes follow the values' sort order."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    values = np.asarray(enc.dictionary.to_pylist(), dtype=object)
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank[np.asarray(enc.indices.fill_null(0), dtype=np.int64)], values[order]


def build_pool(candidates: pa.Table | pd.DataFrame, scores: pa.Table | pd.DataFrame, *,
               metric_columns: tuple[str, ...] = (), format_column: str | None = None,
               candidates_uri: str = "candidates", scores_uri: str = "scores", needs_raw: bool = True) -> Inputs:
    """Join candidates (left) with scores on ``candidate_id``.

    A candidate with no scores row gets null metrics. ``metric_columns`` must exist in the
    scores table and be numeric (configured columns are checked here, before any work).
    Adds ``words`` (whitespace word count of ``text``), ``parse_ok`` filled from
    ``parse_status`` where null, ``has_text`` / ``has_raw`` (a non-blank raw output), and
    ``fmt_score`` (the scores' format column when present, else ``parse_ok`` as 1.0/0.0).
    """
    cand, sc = _table(candidates), _table(scores)
    for col in CANDIDATE_COLUMNS:
        if col not in cand.column_names and not (col == "raw" and not needs_raw):
            raise InputError("missing column", file=candidates_uri, field=col)
    if "candidate_id" not in sc.column_names:
        raise InputError("missing column", file=scores_uri, field="candidate_id")
    clash = sorted(set(metric_columns) & set(RESERVED))
    if clash:
        raise InputError(f"metric column name clashes with a pool column {RESERVED}", file=scores_uri, field=clash[0])
    _check_unique(cand.column("candidate_id"), file=candidates_uri)
    _check_unique(sc.column("candidate_id"), file=scores_uri)
    for m in metric_columns:
        if m not in sc.column_names:
            raise InputError(f"no such metric column (configured as a recipe weight); the scores table has "
                             f"{[c for c in sc.column_names if c != 'candidate_id']}", file=scores_uri, field=m)
        t = sc.schema.field(m).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            bad = pc.index(pc.is_valid(sc.column(m)), True).as_py()
            raise InputError(f"metric column is not numeric (type {t})", file=scores_uri,
                             record=sc.column("candidate_id")[bad].as_py() if bad >= 0 else None, field=m)
    # One order whatever the parts' order (a resumed generation writes them differently): every
    # float sum over the pool, and so every score and margin, is then reproducible to the bit.
    cand = cand.sort_by("candidate_id")
    cids = cand.column("candidate_id")
    known = pc.is_in(sc.column("candidate_id"), value_set=cids)
    if not pc.all(known).as_py() and len(sc):
        first = pc.index(known, False).as_py()
        raise InputError(f"score for a candidate that is not in {candidates_uri}", file=scores_uri,
                         record=sc.column("candidate_id")[first].as_py(), field="candidate_id")
    where = pc.index_in(cids, value_set=sc.column("candidate_id"))

    def from_scores(name: str) -> np.ndarray:
        col = sc.column(name).combine_chunks().cast(pa.float64()).take(where)
        return col.to_numpy(zero_copy_only=False)

    n = cand.num_rows
    status = cand.column("parse_status")
    parse_ok = pc.fill_null(pc.if_else(pc.is_null(cand.column("parse_ok")), pc.equal(status, "valid"),
                                       cand.column("parse_ok")), False)
    template = cand.column("template").cast(pa.string()) if "template" in cand.column_names else pa.nulls(n, pa.string())
    for alias, name in TEMPLATE_ALIASES.items():
        template = pc.if_else(pc.equal(template, alias), name, template)
    # Recipes without format pairs never show a raw output: their callers may leave it unread.
    raw = cand.column("raw") if "raw" in cand.column_names else pa.chunked_array([pa.nulls(n, pa.string())])
    pcode, prompt_values = _coded(cand.column("prompt_id"))
    gcode, generators = _coded(cand.column("generator").fill_null(""))
    frame = {
        "candidate_id": cids, "prompt_id": cand.column("prompt_id"), "generator": cand.column("generator"),
        "parse_status": status, "template": template, "text": cand.column("text"), "raw": raw,
    }
    pool = pa.table(frame).to_pandas()
    pool["pcode"] = pcode
    pool["gcode"] = gcode
    pool["parse_ok"] = np.asarray(parse_ok, dtype=bool)
    pool["has_text"] = np.asarray(pc.is_valid(cand.column("text")), dtype=bool)
    pool["has_raw"] = np.asarray(pc.fill_null(pc.match_substring_regex(raw, r"\S"), False), dtype=bool)
    pool["words"] = word_counts(cand.column("text"))
    for m in dict.fromkeys(metric_columns):
        pool[m] = from_scores(m)
    ok = pool["parse_ok"].to_numpy(dtype="float64")
    format_source = "candidates.parse_ok"
    if format_column and format_column in sc.column_names:
        format_source = f"scores.{format_column}"
        fmt = from_scores(format_column)
        # A candidate the format check could not score falls back to the parser's verdict.
        pool["fmt_score"] = np.where(np.isnan(fmt), ok, fmt)
    else:
        pool["fmt_score"] = ok
    pool["cid_hash"] = _hash(cids)
    pool["pid_hash"] = _hash(pa.array(prompt_values, type=pa.string()))[pcode] if n else np.zeros(0, np.uint64)
    return Inputs(pool, scores_uri=scores_uri, candidates_uri=candidates_uri, score_columns=tuple(metric_columns),
                  generators=[str(g) for g in generators], format_source=format_source)


_FAMILY = re.compile(r"[A-Za-z]+")


def family_of(generator: str, families: dict[str, str] | None = None) -> str:
    """A generator's family: configured, else the leading letters of its name, lower-cased
    (gpt-4o-mini -> gpt, Qwen2-7B-Instruct -> qwen, Llama-3.1-8B-Instruct -> llama)."""
    if families and generator in families:
        return families[generator]
    m = _FAMILY.match(generator or "")
    return m.group(0).lower() if m else (generator or "")
