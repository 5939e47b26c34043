"""Pairwise verification of content pairs (``pairs.persodpo.verify: pairwise``).

A content pair is kept only when the pairwise judgments (persodpo.score.pairwise, the verdicts
table the score stage writes with ``score.panel.pairwise: true``) confirm it: for every judge and
dimension that judged the two replies, the chosen reply won in both orders. A pair is dropped as
``lost`` (some consistent verdict preferred the rejected reply), ``inconsistent`` (some judge's
two orders disagreed), ``tie``, or ``not_judged`` (outside ``panel.pairwise_max_per_prompt``).
Format pairs are not verified: their rejected side failed the format, which is no judge's call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

REASONS = ("lost", "inconsistent", "tie", "not_judged")


def verdict_index(verdicts: pa.Table) -> dict[frozenset, list[tuple[str | None, bool | None]]]:
    """{(candidate, candidate): [(winning candidate id | "tie" | None, consistent)]}."""
    out: dict[frozenset, list] = {}
    for r in verdicts.select(["candidate_a", "candidate_b", "winner", "consistent"]).to_pylist():
        w = r["winner"]
        winner = r["candidate_a"] if w == "a" else r["candidate_b"] if w == "b" else w
        out.setdefault(frozenset((r["candidate_a"], r["candidate_b"])), []).append((winner, r["consistent"]))
    return out


def judge_pair(chosen: str, rejected: str, index: dict) -> str:
    """"kept" or the reason a content pair is dropped."""
    found = index.get(frozenset((chosen, rejected)))
    if not found:
        return "not_judged"
    if any(w == rejected for w, _ in found):
        return "lost"
    if any(c is False or c is None for _, c in found):
        return "inconsistent"
    if any(w == "tie" for w, _ in found):
        return "tie"
    return "kept"


def verify_pairwise(pool: pd.DataFrame, selection: pd.DataFrame, verdicts: pa.Table) -> tuple[pd.DataFrame, dict]:
    index = verdict_index(verdicts)
    cids = pool["candidate_id"].to_numpy(dtype=object)
    content = selection["pair_type"].to_numpy(dtype=object) == "content"
    outcome = np.array(["kept"] * len(selection), dtype=object)
    for k in np.flatnonzero(content):
        outcome[k] = judge_pair(cids[selection["chosen"].iat[k]], cids[selection["rejected"].iat[k]], index)
    kept = selection[outcome == "kept"].reset_index(drop=True)
    stats = {"checked": int(content.sum()), "kept": int((outcome[content] == "kept").sum()),
             "dropped": {r: int((outcome == r).sum()) for r in REASONS}}
    stats["dropped_total"] = sum(stats["dropped"].values())
    return kept, stats
