"""A recipe's selection -> the pairs table (TRL conversational form, contracts.PAIRS).

``prompt`` is the prompt template applied to the prompt row, exactly what the replies answered
(``persodpo.prompting.build_messages``); ``chosen``/``rejected`` are one assistant message each:
the reply rendered in the template's reply format (``{"response": text}`` for the JSON
templates), or for the rejected side of a format pair the raw output as the model wrote it.
Tables are built column-wise in Arrow, one chunk of ``rows_per_part`` pairs at a time, so memory
stays bounded however many pairs share a long prompt.
"""

from __future__ import annotations

from hashlib import sha256
from json.encoder import encode_basestring
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persodpo import contracts
from persodpo.errors import InputError, StageError

PROMPT_FIELDS = ("persona", "knowledge", "history")


def render_reply(text: str, response_format: str) -> str:
    """A reply in the format the prompt asked for: for JSON, exactly
    ``json.dumps({"response": text}, ensure_ascii=False)`` (unescaped non-ASCII: the model should
    learn to write "café", not "caf\\u00e9"), via the C string encoder (a million replies in ~1 s)."""
    if response_format == "json":
        return '{"response": ' + encode_basestring(text) + "}"
    return text


# What json.dumps(..., ensure_ascii=False) escapes in a string: quote, backslash, control characters.
_JSON_ESCAPED = r'["\\\x00-\x1f]'


def render_replies(texts: pa.Array, response_format: str) -> pa.Array:
    """``render_reply`` over an Arrow array: one concatenation for the replies that need no
    escaping (most), the JSON encoder only for those that do."""
    texts = texts.cast(pa.string())
    if response_format != "json":
        return texts
    out = pc.binary_join_element_wise('{"response": "', texts, '"}', "")
    needs = pc.fill_null(pc.match_substring_regex(texts, _JSON_ESCAPED), False)
    if pc.any(needs).as_py():
        escaped = [render_reply(t, "json") for t in texts.filter(needs).to_pylist()]
        out = pc.replace_with_mask(out, needs, pa.array(escaped, type=pa.string()))
    return out


def arrow_column(col: pd.Series) -> pa.Array | pa.ChunkedArray:
    """A pool column in Arrow: zero-copy for the Arrow-backed string columns (chunks are kept:
    combining a million replies would copy them all)."""
    arr = pa.array(col)
    return arr.cast(pa.string()) if pa.types.is_null(arr.type) else arr


def take(arr: pa.Array | pa.ChunkedArray, positions: np.ndarray) -> pa.Array:
    """``arr[positions]`` as one Arrow array."""
    out = arr.take(pa.array(np.asarray(positions, dtype=np.int64)))
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def take_sorted(arr: pa.Array | pa.ChunkedArray, positions: np.ndarray) -> pa.Array:
    """``arr[positions]`` for sorted, distinct positions: a mask filter works chunk by chunk,
    where a take on a chunked array of long strings would first join all its chunks."""
    mask = np.zeros(len(arr), dtype=bool)
    mask[positions] = True
    return take_all(arr.filter(pa.array(mask)))


def take_all(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def pair_ids(recipe: str, chosen: list[str], rejected: list[str]) -> list[str]:
    """``contracts.pair_id`` for many pairs at once: the same bytes hashed, without the generic
    helper's per-call overhead (a test checks both agree)."""
    prefix = f"pair\x1f{recipe}\x1f"
    return ["d_" + sha256((prefix + c + "\x1f" + r).encode("utf-8")).hexdigest()[:24] for c, r in zip(chosen, rejected)]


def prompt_messages(prompts: pa.Table, prompt_ids: np.ndarray, template: str, word_limit: int,
                    prompts_uri: str = "prompts") -> pa.Array:
    """The prompt messages of each id in ``prompt_ids`` (one template call per prompt, not per pair)."""
    from persodpo.prompting import build_messages

    if "prompt_id" not in prompts.column_names:
        raise InputError("missing column", file=prompts_uri, field="prompt_id")
    ids = prompts.column("prompt_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise InputError("duplicate prompt_id", file=prompts_uri, record=dup, field="prompt_id")
    wanted = pa.array(prompt_ids, type=pa.string())
    where = pc.index_in(wanted, value_set=ids)
    if where.null_count:
        missing = wanted.filter(pc.is_null(where))[0].as_py()
        raise InputError("a candidate answers this prompt, but the prompts table has no such prompt_id",
                         file=prompts_uri, record=missing, field="prompt_id")
    cols = [c for c in PROMPT_FIELDS if c in prompts.column_names]
    # Filter (chunk by chunk) in table order, then put the rows in the order asked for.
    where = np.asarray(where, dtype=np.int64)
    order = np.argsort(where, kind="stable")
    picked = prompts.select(cols).filter(pa.array(np.isin(np.arange(prompts.num_rows), where))).to_pylist()
    rows = [None] * len(where)
    for k, i in enumerate(order):
        rows[i] = picked[k]
    out = []
    for pid, row in zip(prompt_ids, rows):
        if not row.get("history"):
            raise InputError("empty dialogue history", file=prompts_uri, record=pid, field="history")
        if row.get("persona") is None:
            raise InputError("null persona", file=prompts_uri, record=pid, field="persona")
        if row.get("knowledge") is None:
            row["knowledge"] = []
        out.append(build_messages(row, template, word_limit))
    return pa.array(out, type=contracts.MESSAGES)


def assistant_messages(contents: pa.Array) -> pa.Array:
    """``[{"role": "assistant", "content": c}]`` for each content (built column-wise)."""
    n = len(contents)
    struct = pa.StructArray.from_arrays([pa.repeat("assistant", n), contents.cast(pa.string())],
                                        fields=list(contracts.MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), struct, type=contracts.MESSAGES)


class PairsBuilder:
    """Everything the chunks share, computed once: ordered pairs, ids, per-prompt messages,
    rendered replies. Strings stay in Arrow and are gathered with ``take``."""

    def __init__(self, pool: pd.DataFrame, sel: pd.DataFrame, prompts: pa.Table, *, recipe: str, template: str,
                 response_format: str, word_limit: int, prompts_uri: str = "prompts"):
        self.recipe = recipe
        # Short id columns are combined once (a take on a chunked array re-joins its chunks on
        # every call); long reply columns are gathered once, for the candidates in a pair only.
        self.cid = take_all(arrow_column(pool["candidate_id"]))
        self.pid = take_all(arrow_column(pool["prompt_id"]))
        self.gen = take_all(arrow_column(pool["generator"]))
        chosen = sel["chosen"].to_numpy(dtype=np.int64)
        rejected = sel["rejected"].to_numpy(dtype=np.int64)
        ids = np.array(pair_ids(recipe, take(self.cid, chosen).to_pylist(), take(self.cid, rejected).to_pylist()),
                       dtype="S26")
        pcode = pool["pcode"].to_numpy()[chosen]
        # Output order: by prompt id (pcode follows it), then pair id; independent of input order.
        order = np.lexsort((ids, pcode))
        self.sel = sel.iloc[order].reset_index(drop=True)
        self.pair_ids = ids[order]
        if len(ids) > 1 and (self.pair_ids[1:] == self.pair_ids[:-1]).any():
            raise StageError(f"recipe {recipe} selected the same (chosen, rejected) pair twice")
        self.chosen = chosen[order]
        self.rejected = rejected[order]
        self.rejected_raw = self.sel["rejected_raw"].to_numpy(dtype=bool)
        self.prompt_msgs = None
        self.prompt_index = np.zeros(0, dtype=np.int64)
        if len(order):
            codes, first, self.prompt_index = np.unique(pcode[order], return_index=True, return_inverse=True)
            prompt_ids = np.array(take(self.pid, self.chosen[first]).to_pylist(), dtype=object)
            self.prompt_msgs = prompt_messages(prompts, prompt_ids, template, word_limit, prompts_uri)
        # Replies are rendered once per candidate that appears in a pair (not once per pair).
        self.used = np.unique(np.concatenate([self.chosen, self.rejected[~self.rejected_raw]]))
        texts = take_sorted(arrow_column(pool["text"]), self.used)
        if texts.null_count:
            raise StageError(f"recipe {recipe} selected a candidate with no reply text")
        self.rendered = render_replies(texts, response_format)
        self.raw_used = np.unique(self.rejected[self.rejected_raw])
        self.raw = take_sorted(arrow_column(pool["raw"]), self.raw_used).cast(pa.string())

    def __len__(self) -> int:
        return len(self.sel)

    def table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        s = self.sel.iloc[start:stop]
        n = len(s)
        if n == 0:
            return contracts.PAIRS.empty_table()
        c, r = self.chosen[start:stop], self.rejected[start:stop]
        rej_raw = self.rejected_raw[start:stop]
        # Rendered reply of the rejected, or (format pairs) its raw output; the chosen's index
        # stands in where the rendered one is not needed, and is replaced by if_else.
        # Each side gathered from its own array; the other array's index is a stand-in that
        # if_else discards.
        rendered_r = take(self.rendered, np.searchsorted(self.used, np.where(rej_raw, c, r)))
        if len(self.raw_used):
            raw_r = take(self.raw, np.minimum(np.searchsorted(self.raw_used, r), len(self.raw_used) - 1))
        else:
            raw_r = pa.nulls(len(r), pa.string())
        rejected = pc.if_else(pa.array(rej_raw), raw_r, rendered_r)
        if rejected.null_count:
            raise StageError(f"recipe {self.recipe} selected a rejected candidate with no output")
        sc, sr = s["score_chosen"].to_numpy(dtype="float64"), s["score_rejected"].to_numpy(dtype="float64")
        cols = {
            "pair_id": pa.array(self.pair_ids[start:stop]).cast(pa.string()),
            "prompt_id": take(self.pid, c),
            "prompt": take(self.prompt_msgs, self.prompt_index[start:stop]),
            "chosen": assistant_messages(take(self.rendered, np.searchsorted(self.used, c))),
            "rejected": assistant_messages(rejected),
            "chosen_candidate_id": take(self.cid, c),
            "rejected_candidate_id": take(self.cid, r),
            "chosen_generator": take(self.gen, c),
            "rejected_generator": take(self.gen, r),
            "score_chosen": pa.array(sc), "score_rejected": pa.array(sr), "margin": pa.array(sc - sr),
            "pair_type": pa.array(s["pair_type"].to_numpy(dtype=object), type=pa.string()),
            "recipe": pa.repeat(self.recipe, n),
        }
        return contracts.conform(pa.table(cols), contracts.PAIRS, name="pairs")

    def chunks(self, rows_per_part: int) -> Iterator[pa.Table]:
        if len(self) == 0:
            yield contracts.PAIRS.empty_table()
            return
        for start in range(0, len(self), rows_per_part):
            yield self.table(start, start + rows_per_part)
