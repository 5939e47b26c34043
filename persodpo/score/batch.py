"""The stage's batch functions, pure over Arrow tables (the Ray Data wrapper only maps them).

  attach_prompts   candidates + the prompt fields metrics read (persona, history, gold)
  add_result       a metric's Result -> float64 columns + its private reason column
  deterministic    every deterministic metric in one pass
  finalize         the scores contract: metric columns, ``score_errors`` ({column: reason} for
                   each null), judge tokens/cost, and the panel aggregates of the judges
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from persodpo.errors import InputError
from persodpo.score.metric import Cols, Metric, Result, error_column

PROMPT_FIELDS = ("persona", "history", "gold")


class PromptIndex:
    """Prompt fields by id, built once per worker process and reused across batches."""

    def __init__(self, prompts: pa.Table):
        self.table = prompts.select(["prompt_id", *PROMPT_FIELDS])
        self.row = {pid: i for i, pid in enumerate(self.table.column("prompt_id").to_pylist())}

    def attach(self, batch: pa.Table, *, source: str = "candidates") -> pa.Table:
        pids = batch.column("prompt_id").to_pylist()
        idx = []
        for k, pid in enumerate(pids):
            i = self.row.get(pid)
            if i is None:
                cid = batch.column("candidate_id")[k].as_py() if "candidate_id" in batch.column_names else k
                raise InputError(f"prompt id {pid!r} is not in the prompts table", file=source,
                                 record=f"candidate {cid}", field="prompt_id")
            idx.append(i)
        taken = self.table.take(pa.array(idx, type=pa.int64()))
        for name in PROMPT_FIELDS:
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, taken.column(name))
        return batch


def _arrow(values, type_: pa.DataType):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)


def add_result(batch: pa.Table, metric_key: str, result: Result) -> pa.Table:
    for name, values in result.columns.items():
        batch = _set(batch, name, _arrow(values, pa.float64()))
    errs = result.errors if result.errors is not None and len(result.errors) else [None] * batch.num_rows
    return _set(batch, error_column(metric_key), _arrow(errs, pa.string()))


def _set(batch: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, arr)
    return batch.append_column(name, arr)


def deterministic(batch: pa.Table, metrics: list[Metric]) -> pa.Table:
    cols = Cols(batch)
    for m in metrics:
        batch = add_result(batch, m.name, m.compute(cols))
    return batch


# -- judges' panel -----------------------------------------------------------------------------
def judge_column(judge: str, dim: str) -> str:
    return f"judge_{judge}_{dim}"


# The judge actors' bookkeeping columns: private (underscore), read by the final step and the
# driver, never written to the scores table. One home for their names.
def status_column(judge: str, dim: str) -> str:
    """Per row: the judgment's status (persodpo.score.judges.STATUSES)."""
    return f"_jstat_{judge}_{dim}"


def tokens_column(judge: str) -> str:
    return f"_jtok_{judge}"


def cost_column(judge: str) -> str:
    return f"_jcost_{judge}"


def new_entries_column(judge: str) -> str:
    """Per row: JSON list of new cache entries (answers this run paid for), for the driver to store."""
    return f"_jnew_{judge}"


def audit_column(judge: str, dim: str) -> str:
    """Per row: a score the judge gave its own generator's reply for the audit only (never in the panel)."""
    return f"_jaudit_{judge}_{dim}"


WORDS_COLUMN = "_jwords"   # the reply's word count (str.split), for the judges' length-bias audit


def bookkeeping_columns(judges: list[str], dims: list[str]) -> tuple[str, ...]:
    """Every private judge column the final step passes through to the driver."""
    return tuple([WORDS_COLUMN] + [status_column(j, d) for j in judges for d in dims] +
                 [audit_column(j, d) for j in judges for d in dims] +
                 [f(j) for f in (tokens_column, cost_column, new_entries_column) for j in judges])


def panel_columns(judges: list[str], dims: list[str]) -> list[str]:
    cols = [judge_column(j, d) for j in judges for d in dims]
    for d in dims:
        cols += [f"judge_{d}", f"judge_{d}_agreement", f"judge_{d}_n"]
    return cols


def agreement(scores: list[float], scale: tuple[int, int]) -> float | None:
    """1 - mean pairwise absolute difference / scale range (1 = all judges agree)."""
    if len(scores) < 2:
        return None
    span = float(scale[1] - scale[0])
    diffs = [abs(a - b) for i, a in enumerate(scores) for b in scores[i + 1:]]
    return 1.0 - (sum(diffs) / len(diffs)) / span


def aggregate_panel(cols: Cols, judges: list[str], dims: list[str], scale: tuple[int, int]) -> dict[str, tuple[list, list]]:
    """Per dimension: mean over judges that scored, agreement, count; with reasons for nulls."""
    n = len(cols)
    out: dict[str, tuple[list, list]] = {}
    for d in dims:
        per_judge = [(j, cols[judge_column(j, d)], cols.get(error_column(judge_column(j, d)))) for j in judges]
        mean, mean_err, agr, agr_err, count = [], [], [], [], []
        for r in range(n):
            vals = [v[r] for _, v, _ in per_judge if v[r] is not None]
            count.append(float(len(vals)))
            if vals:
                mean.append(sum(vals) / len(vals))
                mean_err.append(None)
            else:
                mean.append(None)
                mean_err.append("no judge scored this reply (" + "; ".join(
                    f"{j}: {e[r] or 'no score'}" for j, _, e in per_judge) + ")")
            a = agreement(vals, scale)
            agr.append(a)
            agr_err.append(None if a is not None else f"{len(vals)} judgment(s); agreement needs 2")
        out[f"judge_{d}"] = (mean, mean_err)
        out[f"judge_{d}_agreement"] = (agr, agr_err)
        out[f"judge_{d}_n"] = (count, [None] * n)
    return out


def _null_rows(col) -> list[int]:
    import numpy as np
    import pyarrow.compute as pc

    return np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False)).tolist()


# -- the final step ----------------------------------------------------------------------------
def finalize(batch: pa.Table, *, groups: list[tuple[str, list[str]]], schema: pa.Schema,
             judges: list[str] | None = None, dims: list[str] | None = None,
             scale: tuple[int, int] = (1, 5), keep: tuple[str, ...] = ()) -> pa.Table:
    """Conform to the scores schema. ``groups``: (metric key, its columns) for every metric that
    ran; each null gets its metric's reason in ``score_errors``. Columns named in ``keep``
    (private judge counters the driver aggregates) are passed through after the contract's."""
    judges, dims = judges or [], dims or []
    cols = Cols(batch)
    n = batch.num_rows
    reasons: dict[int, dict[str, str]] = {}
    values: dict[str, Any] = {}
    for key, names in groups:
        errs = None
        for name in names:
            col = batch.column(name)
            values[name] = col
            if col.null_count:
                # Only rows with nulls need a reason: most rows have none, so no per-row Python loop.
                if errs is None:
                    errs = cols.get(error_column(key))
                for r in _null_rows(col):
                    reasons.setdefault(r, {})[name] = errs[r] or "not computed"
    if judges:
        for name, (vals, errs) in aggregate_panel(cols, judges, dims, scale).items():
            values[name] = pa.array(vals, type=pa.float64())
            for r in range(n):
                if vals[r] is None:
                    reasons.setdefault(r, {})[name] = errs[r] or "not computed"
        tok = [0] * n
        cost = [0.0] * n
        for j in judges:
            for r, (t, c) in enumerate(zip(cols.get(tokens_column(j), 0), cols.get(cost_column(j), 0.0))):
                tok[r] += int(t or 0)
                cost[r] += float(c or 0.0)
        judge_tokens = pa.array(tok, type=pa.int64())
        judge_cost = pa.array(cost, type=pa.float64())
    else:
        judge_tokens = pa.nulls(n, pa.int64())
        judge_cost = pa.nulls(n, pa.float64())
    arrays = []
    for f in schema:
        if f.name == "score_errors":
            arrays.append(pa.array([json.dumps(reasons[r], sort_keys=True) if r in reasons else None for r in range(n)],
                                   type=pa.string()))
        elif f.name == "judge_tokens":
            arrays.append(judge_tokens)
        elif f.name == "judge_cost_usd":
            arrays.append(judge_cost)
        elif f.name in values:
            arrays.append(values[f.name].cast(f.type) if values[f.name].type != f.type else values[f.name])
        else:
            arrays.append(batch.column(f.name).cast(f.type))
    fields = list(schema)
    for k in keep:
        if k in batch.column_names:
            arrays.append(batch.column(k))
            fields.append(batch.schema.field(k))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
