"""Small candidate tables for the score stage's tests, made from real prompts (the bundled sample).

Each "generator" is a known behaviour, so expected scores can be checked by hand: ``gold`` answers
with the gold reply as one JSON object (BLEU 1 vs gold), ``truncated`` is cut off mid-string,
``prefixed`` has a role prefix, ``chatty`` wraps the object in prose, ``failed`` is a failed
request (no raw output).
"""

from __future__ import annotations

import json

import pyarrow as pa

from persodpo import contracts
from persodpo import storage as st
from persodpo.parsing import parse_response

VARIANTS = ("gold", "truncated", "prefixed", "chatty", "failed")


def raw_output(variant: str, gold: str) -> str | None:
    words = gold.split()
    return {
        "gold": json.dumps({"response": gold}),
        "truncated": '{"response": "' + " ".join(words[: max(1, len(words) // 2)]),
        "prefixed": "User2: " + json.dumps({"response": gold}),
        "chatty": "Sure! Here is my reply:\n" + json.dumps({"response": "I hear you. " + gold}) + "\nHope it helps!",
        "failed": None,
    }[variant]


def make_candidates(prompts: pa.Table, variants=VARIANTS, *, text_suffix=None,
                    template: str = "persobench-json-v1") -> pa.Table:
    """One candidate per prompt and variant. ``text_suffix(prompt_index, variant)`` returns text
    appended to the reply (to put fault markers into what a judge sees)."""
    rows = []
    for i, p in enumerate(prompts.to_pylist()):
        for v in variants:
            raw = raw_output(v, p["gold"])
            suffix = text_suffix(i, v) if text_suffix else ""
            if raw is not None and suffix and v != "truncated":
                obj = json.loads(raw[raw.index("{"):raw.rindex("}") + 1])
                raw = raw.replace(json.dumps(obj), json.dumps({"response": obj["response"] + suffix}))
            elif raw is not None and suffix:
                raw += suffix
            parsed = parse_response(raw, "json") if raw is not None else None
            rows.append({
                "candidate_id": contracts.candidate_id(p["prompt_id"], v, 0), "prompt_id": p["prompt_id"],
                "generator": v, "sample_index": 0, "raw": raw, "text": parsed.text if parsed else None,
                "parse_ok": bool(parsed and parsed.ok), "parse_status": parsed.status if parsed else "error",
                "n_tokens": None, "latency_s": 0.1, "error": None if parsed else "request failed: 500",
                "template": template,
            })
    return pa.Table.from_pylist(rows, schema=contracts.CANDIDATES)


def write_output(uri: str, table: pa.Table, storage=None) -> str:
    out = st.StageOutput(uri, storage).begin()
    half = max(1, table.num_rows // 2)
    out.write_table(table.slice(0, half))   # two parts, like a real stage output
    if table.num_rows > half:
        out.write_table(table.slice(half))
    out.commit({"stage": "test", "rows": table.num_rows})
    return uri
