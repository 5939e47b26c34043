"""``simple``: the paper's standard-DPO baseline. Per prompt, every output that followed the
requested format (chosen, its reply rendered in that format) x every output that did not
(rejected, its raw output as the model wrote it). No content metric is used.

The format signal is the scores' format column when there is one, else the parser's verdict
(``parse_ok``). Re-serialising a failed output as valid JSON, as the paper recipes do, would
erase the only difference this baseline is about, so the rejected side keeps the raw output.
"""

from __future__ import annotations

import pandas as pd

from persodpo.pairs.select import cross_within_prompt, first_k_per_prompt, random_key, selection


def format_sides(pool: pd.DataFrame, threshold: float, *, include_unusable: bool = True) -> tuple[pd.Series, pd.Series]:
    """(format-ok candidates with a reply, format-failed candidates with a non-empty raw output)."""
    ok = pool["fmt_score"] >= threshold
    raw_present = pool["raw"].fillna("").str.strip().ne("")
    good = ok & pool["text"].notna()
    bad = ~ok & raw_present
    if not include_unusable:
        bad &= pool["parse_status"].ne("unusable")
    return good, bad


def run(pool: pd.DataFrame, rc, pairs_cfg):
    from persodpo.pairs.recipes import RecipeResult

    good, bad = format_sides(pool, pairs_cfg.format_threshold, include_unusable=rc.include_unusable)
    left = pd.DataFrame({"pos": pool.index[good], "prompt_id": pool.loc[good, "prompt_id"].to_numpy(),
                         "cid": pool.loc[good, "candidate_id"].to_numpy(),
                         "score": pool.loc[good, "fmt_score"].to_numpy()})
    right = pd.DataFrame({"pos": pool.index[bad], "prompt_id": pool.loc[bad, "prompt_id"].to_numpy(),
                          "cid": pool.loc[bad, "candidate_id"].to_numpy(),
                          "score": pool.loc[bad, "fmt_score"].to_numpy()})
    cross = cross_within_prompt(left, right)
    n_cross = len(cross)
    if rc.max_pairs_per_prompt is not None and len(cross):
        cross = cross.assign(key=random_key(cross["cid_c"] + "\x1f" + cross["cid_r"], rc.seed, "simple"))
        cross = first_k_per_prompt(cross, ["key"], [True], rc.max_pairs_per_prompt)
    stats = {"n_candidates": int(len(pool)), "n_format_ok": int(good.sum()), "n_format_failed": int(bad.sum()),
             # failed with no raw output (a failed request), or unusable with include_unusable off
             "n_format_failed_excluded": int((~(pool["fmt_score"] >= pairs_cfg.format_threshold) & ~bad).sum()),
             "n_cross_product": int(n_cross)}
    sel = selection(cross["pos_c"], cross["pos_r"], cross["score_c"], cross["score_r"], "format", True)
    return RecipeResult(sel, pool["fmt_score"].where(good | bad), stats)
