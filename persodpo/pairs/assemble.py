"""A recipe's selection -> the pairs table (TRL conversational form, contracts.PAIRS).

``prompt`` is the prompt template applied to the prompt row, exactly what the replies answered
(``persodpo.prompting.build_messages``); ``chosen``/``rejected`` are one assistant message each:
the reply rendered in the template's reply format (``{"response": text}`` for the JSON
templates), or for the rejected side of a format pair the raw output as the model wrote it.
Tables are built column-wise in Arrow, one chunk of ``rows_per_part`` pairs at a time, so memory
stays bounded however many pairs share a long prompt.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persodpo import contracts
from persodpo.errors import InputError, StageError

PROMPT_FIELDS = ("persona", "knowledge", "history")


def render_reply(text: str, response_format: str) -> str:
    """A reply in the format the prompt asked for."""
    if response_format == "json":
        # Unescaped non-ASCII: the model should learn to write "café", not "caf\\u00e9".
        return json.dumps({"response": text}, ensure_ascii=False)
    return text


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
    rows = prompts.select(cols).take(where).to_pylist()
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
    """Everything the chunks share, computed once: ordered pairs, ids, per-prompt messages."""

    def __init__(self, pool: pd.DataFrame, sel: pd.DataFrame, prompts: pa.Table, *, recipe: str, template: str,
                 response_format: str, word_limit: int, prompts_uri: str = "prompts"):
        cids = pool["candidate_id"].to_numpy(dtype=object)
        chosen = sel["chosen"].to_numpy(dtype=np.int64)
        rejected = sel["rejected"].to_numpy(dtype=np.int64)
        ids = np.array([contracts.pair_id(recipe, c, r) for c, r in zip(cids[chosen], cids[rejected])], dtype=object)
        pids = pool["prompt_id"].to_numpy(dtype=object)[chosen]
        if len(ids) and len(set(ids)) != len(ids):
            raise StageError(f"recipe {recipe} selected the same (chosen, rejected) pair twice")
        order = np.lexsort((ids, pids)) if len(ids) else np.zeros(0, dtype=np.int64)
        self.sel = sel.iloc[order].reset_index(drop=True)
        self.pair_ids = ids[order]
        self.prompt_ids = pids[order]
        self.recipe = recipe
        self.prompt_msgs = None
        self.prompt_index = np.zeros(0, dtype=np.int64)
        if len(order):
            uniq, self.prompt_index = np.unique(self.prompt_ids, return_inverse=True)
            self.prompt_msgs = prompt_messages(prompts, uniq, template, word_limit, prompts_uri)
        # Replies are rendered only for the candidates that appear in a pair.
        texts = pool["text"].to_numpy(dtype=object)
        used = np.unique(np.concatenate([self.sel["chosen"].to_numpy(), self.sel["rejected"].to_numpy()]))
        rendered = np.full(len(pool), None, dtype=object)
        rendered[used] = [render_reply(t, response_format) if isinstance(t, str) else None for t in texts[used]]
        self.rendered = rendered
        self.raw = pool["raw"].to_numpy(dtype=object)
        self.cids = cids
        self.generators = pool["generator"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.sel)

    def table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        s = self.sel.iloc[start:stop]
        n = len(s)
        if n == 0:
            return contracts.PAIRS.empty_table()
        c = s["chosen"].to_numpy()
        r = s["rejected"].to_numpy()
        rej_raw = s["rejected_raw"].to_numpy(dtype=bool)
        rejected = np.where(rej_raw, self.raw[r], self.rendered[r])
        if pd.isna(rejected).any() or pd.isna(self.rendered[c]).any():
            raise StageError(f"recipe {self.recipe} selected a candidate with no reply text")
        sc, sr = s["score_chosen"].to_numpy(dtype="float64"), s["score_rejected"].to_numpy(dtype="float64")
        cols = {
            "pair_id": pa.array(self.pair_ids[start:stop], type=pa.string()),
            "prompt_id": pa.array(self.prompt_ids[start:stop], type=pa.string()),
            "prompt": self.prompt_msgs.take(pa.array(self.prompt_index[start:stop])),
            "chosen": assistant_messages(pa.array(self.rendered[c], type=pa.string())),
            "rejected": assistant_messages(pa.array(rejected, type=pa.string())),
            "chosen_candidate_id": pa.array(self.cids[c], type=pa.string()),
            "rejected_candidate_id": pa.array(self.cids[r], type=pa.string()),
            "chosen_generator": pa.array(self.generators[c], type=pa.string()),
            "rejected_generator": pa.array(self.generators[r], type=pa.string()),
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
