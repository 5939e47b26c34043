"""The candidate pool: candidates joined with their scores, one pandas row per candidate.

Every recipe works on this frame (positions into it identify candidates), so input checks live
here once: missing columns, duplicate ids, scores for unknown candidates, non-numeric metrics.
Errors name the table's URI, the record (candidate id) and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from persodpo import storage as st
from persodpo.errors import InputError

CANDIDATE_COLUMNS = ("candidate_id", "prompt_id", "generator", "raw", "text", "parse_ok", "parse_status")
CANDIDATE_OPTIONAL = ("template",)

# The authors'-data import labels its candidates with the instruction the authors used;
# persobench-json-v1 reproduces that instruction word for word.
TEMPLATE_ALIASES = {"persobench-json-authors": "persobench-json-v1"}


@dataclass
class Inputs:
    """What a recipe needs: the pool frame and where it came from (for error messages)."""

    pool: pd.DataFrame
    scores_uri: str = "scores"
    candidates_uri: str = "candidates"
    score_columns: tuple[str, ...] = ()


def word_counts(texts: pd.Series) -> np.ndarray:
    """Whitespace word count (Python's ``str.split()``, as the authors counted); 0 for null.

    A generator over the strings is faster than pandas' ``str.split`` (which builds lists) and
    exact, unlike Arrow's whitespace split whose notion of whitespace differs at the edges.
    """
    return np.fromiter((len(t.split()) if isinstance(t, str) else 0 for t in texts),
                       dtype=np.int64, count=len(texts))


def read_columns(uri: str, storage, *, required: tuple[str, ...], optional: tuple[str, ...] = (),
                 all_columns: bool = False) -> pa.Table:
    """Read a complete stage output; InputError naming the URI and field for a missing column."""
    parts = st.part_uris(uri, storage)
    fs, _ = st.resolve(uri, storage)
    if parts:
        schema = pq.read_schema(st.resolve(parts[0], storage)[1], filesystem=fs)
        names = schema.names
    else:
        names = []
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"missing column (the table has {names})", file=uri, field=missing[0])
    cols = None if all_columns else [c for c in (*required, *optional) if c in names]
    return st.read_table(uri, storage, columns=cols)


def _check_unique(ids: pd.Series, *, file: str) -> None:
    dup = ids.duplicated()
    if dup.any():
        raise InputError("duplicate candidate_id", file=file, record=str(ids[dup].iloc[0]), field="candidate_id")


def build_pool(candidates: pa.Table | pd.DataFrame, scores: pa.Table | pd.DataFrame, *,
               metric_columns: tuple[str, ...] = (), format_column: str | None = None,
               candidates_uri: str = "candidates", scores_uri: str = "scores") -> Inputs:
    """Join candidates (left) with scores on ``candidate_id``.

    A candidate with no scores row gets null metrics. ``metric_columns`` must exist in the
    scores table and be numeric (configured columns are checked here, before any work).
    Adds ``words`` (whitespace word count of ``text``), ``parse_ok`` filled from
    ``parse_status`` where null, and ``fmt_score`` (the scores' format column when present,
    else ``parse_ok`` as 1.0/0.0) with ``fmt_ok``.
    """
    cand = candidates.to_pandas() if isinstance(candidates, pa.Table) else candidates.copy()
    sc = scores.to_pandas() if isinstance(scores, pa.Table) else scores.copy()
    for col in CANDIDATE_COLUMNS:
        if col not in cand.columns:
            raise InputError("missing column", file=candidates_uri, field=col)
    if "candidate_id" not in sc.columns:
        raise InputError("missing column", file=scores_uri, field="candidate_id")
    _check_unique(cand["candidate_id"], file=candidates_uri)
    _check_unique(sc["candidate_id"], file=scores_uri)
    for m in metric_columns:
        if m not in sc.columns:
            raise InputError(f"no such metric column (configured as a recipe weight); the scores table has "
                             f"{[c for c in sc.columns if c != 'candidate_id']}", file=scores_uri, field=m)
        if not (pd.api.types.is_numeric_dtype(sc[m]) or pd.api.types.is_bool_dtype(sc[m])):
            bad = sc[m].dropna()
            raise InputError(f"metric column is not numeric (dtype {sc[m].dtype})", file=scores_uri,
                             record=str(sc.loc[bad.index[0], "candidate_id"]) if len(bad) else None, field=m)
    has_format = bool(format_column) and format_column in sc.columns
    keep = ["candidate_id", *dict.fromkeys(metric_columns)]
    if has_format and format_column not in keep:
        keep.append(format_column)
    sc = sc[keep]
    known = sc["candidate_id"].isin(cand["candidate_id"])
    if not known.all():
        raise InputError(f"score for a candidate that is not in {candidates_uri}", file=scores_uri,
                         record=str(sc.loc[~known, "candidate_id"].iloc[0]), field="candidate_id")
    if "template" not in cand.columns:
        cand["template"] = None
    pool = cand[[*CANDIDATE_COLUMNS, "template"]].merge(sc, on="candidate_id", how="left", validate="one_to_one")
    for m in metric_columns:
        pool[m] = pool[m].astype("float64")
    status = pool["parse_status"].astype(object)
    parse_ok = pool["parse_ok"].astype(object)
    pool["parse_ok"] = parse_ok.where(parse_ok.notna(), status.eq("valid")).astype(bool)
    pool["words"] = word_counts(pool["text"])
    if has_format:
        f = pool[format_column]
        fmt = pd.to_numeric(f.astype(object).where(f.notna(), None), errors="coerce").astype("float64")
        # A candidate the format check could not score falls back to the parser's verdict.
        pool["fmt_score"] = fmt.where(fmt.notna(), pool["parse_ok"].astype("float64"))
    else:
        pool["fmt_score"] = pool["parse_ok"].astype("float64")
    pool["template"] = pool["template"].map(lambda t: TEMPLATE_ALIASES.get(t, t) if isinstance(t, str) else None)
    return Inputs(pool.reset_index(drop=True), scores_uri=scores_uri, candidates_uri=candidates_uri,
                  score_columns=tuple(metric_columns))


_FAMILY = re.compile(r"[A-Za-z]+")


def family_of(generator: str, families: dict[str, str] | None = None) -> str:
    """A generator's family: configured, else the leading letters of its name, lower-cased
    (gpt-4o-mini -> gpt, Qwen2-7B-Instruct -> qwen, Llama-3.1-8B-Instruct -> llama)."""
    if families and generator in families:
        return families[generator]
    m = _FAMILY.match(generator or "")
    return m.group(0).lower() if m else (generator or "")
