"""``simple``: the paper's standard-DPO baseline. Per prompt, every output that followed the
requested format (chosen, its reply rendered in that format) x every output that did not
(rejected, its raw output as the model wrote it). No content metric is used.

The format signal is the scores' format column when there is one, else the parser's verdict
(``parse_ok``). Re-serialising a failed output as valid JSON, as the paper recipes do, would
erase the only difference this baseline is about, so the rejected side keeps the raw output.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from persodpo.pairs.select import cross_within_prompt, first_k_per_prompt, seeded_key, selection


def format_sides(pool: pd.DataFrame, threshold: float, *, include_unusable: bool = True) -> tuple[pd.Series, pd.Series]:
    """(format-ok candidates with a reply, format-failed candidates with a non-empty raw output)."""
    ok = pool["fmt_score"].to_numpy() >= threshold
    good = ok & pool["has_text"].to_numpy()
    bad = ~ok & pool["has_raw"].to_numpy()
    if not include_unusable:
        bad &= pool["parse_status"].ne("unusable").to_numpy(dtype=bool)
    return pd.Series(good, index=pool.index), pd.Series(bad, index=pool.index)


def run(pool: pd.DataFrame, rc, pairs_cfg):
    from persodpo.pairs.recipes import RecipeResult

    good, bad = format_sides(pool, pairs_cfg.format_threshold, include_unusable=rc.include_unusable)
    cols = pool[["pcode", "cid_hash", "fmt_score"]]
    left = cols[good.to_numpy()].reset_index(names="pos")
    right = cols[bad.to_numpy()].reset_index(names="pos")
    cross = cross_within_prompt(left, right)
    n_cross = len(cross)
    if rc.max_pairs_per_prompt is not None and len(cross):
        pair_hash = seeded_key(cross["cid_hash_c"].to_numpy(), 0, "c") ^ cross["cid_hash_r"].to_numpy(dtype=np.uint64)
        cross = cross.assign(key=seeded_key(pair_hash, rc.seed, "simple"))
        cross = first_k_per_prompt(cross, ["key"], [True], rc.max_pairs_per_prompt)
    stats = {"n_candidates": int(len(pool)), "n_format_ok": int(good.sum()), "n_format_failed": int(bad.sum()),
             # failed with no raw output (a failed request), or unusable with include_unusable off
             "n_format_failed_excluded": int((~(pool["fmt_score"] >= pairs_cfg.format_threshold) & ~bad).sum()),
             "n_cross_product": int(n_cross)}
    sel = selection(cross["pos_c"], cross["pos_r"], cross["fmt_score_c"], cross["fmt_score_r"], "format", True)
    return RecipeResult(sel, pool["fmt_score"].where(good | bad), stats)
