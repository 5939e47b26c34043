"""``persodpo``: our recipe (the default), built to avoid the paper recipe's known flaws.

- **Format is a gate, not a score.** Only outputs that followed the requested format (the
  scores' format column, else the parser's verdict) compete on content. Format failures make
  separate ``pair_type=format`` pairs: the prompt's best format-ok reply (chosen) against a
  failed output exactly as the model wrote it (rejected), at most ``format_pairs_per_prompt``
  per prompt. The paper gives failures worst-case content scores and re-serialises them as
  valid JSON, so its pairs mostly teach "the other generators' style" instead of "follow the
  format".
- **Per-prompt normalisation.** Each metric is compared within its prompt only: ``prompt-z``
  centres it on the prompt's mean and divides by the metric's pooled within-prompt standard
  deviation (one scale for every prompt, so a tiny difference in a saturated metric such as
  Coh-UniEval stays tiny); ``prompt-minmax`` rescales each prompt's range to 0..1. The content
  score is the weighted mean of the normalised metrics; no length term.
- **Selection.** Chosen is the prompt's best; rejected are up to ``max_pairs_per_prompt`` others
  at least ``min_margin`` below it: the worst ones (``best-worst``) or random ones
  (``best-random``). Ties (same score) never make a pair; equal best scores are broken by a
  seeded hash of the candidate id, so reruns pick the same.
- **On-policy (iterative DPO).** With ``on_policy`` the pairs are built among the policy
  generator's own samples only (normalised among them, the best against the worst or random
  lower ones), and ``off_policy_share`` of the content pairs may come from the other generators'
  candidates (the best pairs by margin); the stats count both.
- **Balance (optional).** ``balance_length`` gives each prompt a target (half: chosen shorter,
  half: chosen longer, by a hash of the prompt id) and prefers eligible rejected that meet it, so
  length cannot decide the pairs; ``prefer_same_family`` prefers a rejected of the chosen's
  generator family; ``max_chosen_family_share`` drops the lowest-margin content pairs of a family
  that is chosen too often, ``max_length_share`` those of the more common length relation
  (chosen shorter / chosen longer). The data card reports what each did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from persodpo.pairs.pool import family_of
from persodpo.pairs.recipes.simple import format_sides
from persodpo.pairs.select import empty_selection, first_k_per_prompt, seeded_key, selection


def content_scores(pool: pd.DataFrame, mask: pd.Series, weights: dict[str, float], normalize: str) -> tuple[pd.Series, dict]:
    """Weighted mean of per-prompt normalised metrics for the rows in ``mask``."""
    rows = pool.loc[mask, ["pcode", *weights]]        # not the reply columns: a million strings
    codes, uniques = pd.factorize(rows["pcode"])
    n_groups = len(uniques)
    total = sum(abs(w) for w in weights.values()) or 1.0
    score = np.zeros(len(rows))
    scales = {}
    for m, w in weights.items():
        x = rows[m].to_numpy(dtype="float64")
        if normalize == "prompt-z":
            sums = np.bincount(codes, weights=x, minlength=n_groups)
            counts = np.bincount(codes, minlength=n_groups)
            centred = x - (sums / np.maximum(counts, 1))[codes]
            dof = len(x) - n_groups
            pooled = float(np.sqrt((centred ** 2).sum() / dof)) if dof > 0 else 0.0
            scales[m] = pooled
            z = centred / pooled if pooled > 0 else np.zeros(len(x))
        else:
            s = pd.Series(x)
            g = s.groupby(codes)
            lo = g.transform("min").to_numpy()
            span = g.transform("max").to_numpy() - lo
            z = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
        score += w * z
    stats = {"pooled_within_prompt_std": scales} if normalize == "prompt-z" else {}
    return pd.Series(score / total, index=rows.index, dtype="float64"), stats


def _content_pairs(pool: pd.DataFrame, score: pd.Series, rc, families: np.ndarray) -> tuple[pd.DataFrame, dict]:
    if score.empty:
        return empty_selection(), {"n_prompts_content": 0, "n_prompts_single_candidate": 0,
                                   "n_prompts_no_margin": 0, "n_dropped_family_cap": 0, "n_dropped_length_cap": 0}
    idx = score.index.to_numpy()
    cid_hash = pool["cid_hash"].to_numpy()[idx]
    c = pd.DataFrame({"pos": idx, "pcode": pool["pcode"].to_numpy()[idx], "score": score.to_numpy(),
                      "words": pool["words"].to_numpy()[idx], "family": families[idx],
                      "pid_hash": pool["pid_hash"].to_numpy()[idx],
                      "tie": seeded_key(cid_hash, rc.seed, "tiebreak"), "draw": seeded_key(cid_hash, rc.seed, "rejected")})
    c = c.sort_values(["pcode", "score", "tie"], ascending=[True, False, True], kind="mergesort")
    rank = c.groupby("pcode", sort=False).cumcount()
    best = c[rank.to_numpy() == 0]
    others = c[rank.to_numpy() > 0]
    cand = others.merge(best[["pcode", "pos", "score", "words", "family"]], on="pcode", suffixes=("", "_b"))
    cand["margin"] = cand["score_b"] - cand["score"]
    eligible = cand[(cand["margin"] >= rc.min_margin) & (cand["margin"] > 0)].copy()
    order, asc = [], []
    if rc.balance_length:
        # Half the prompts want the chosen shorter, half longer; equal lengths meet either.
        want_shorter = (seeded_key(eligible["pid_hash"].to_numpy(), rc.seed, "length") & np.uint64(1)) == 0
        longer_chosen = eligible["words_b"].to_numpy() > eligible["words"].to_numpy()
        shorter_chosen = eligible["words_b"].to_numpy() < eligible["words"].to_numpy()
        eligible["length_miss"] = np.where(want_shorter, longer_chosen, shorter_chosen)
        order.append("length_miss")
        asc.append(True)
    if rc.prefer_same_family:
        eligible["family_miss"] = eligible["family"].to_numpy() != eligible["family_b"].to_numpy()
        order.append("family_miss")
        asc.append(True)
    if rc.selection == "best-worst":
        order += ["score", "tie"]
        asc += [True, True]
    else:
        order.append("draw")
        asc.append(True)
    picked = first_k_per_prompt(eligible, order, asc, rc.max_pairs_per_prompt)
    n_dropped_family = n_dropped_length = 0
    if rc.max_chosen_family_share is not None:
        picked, n_dropped_family = cap_share(picked, "family_b", rc.max_chosen_family_share)
    if rc.max_length_share is not None:
        wb, w = picked["words_b"].to_numpy(), picked["words"].to_numpy()
        picked = picked.assign(length_rel=np.where(wb < w, "shorter", np.where(wb > w, "longer", "equal")))
        picked, n_dropped_length = cap_share(picked, "length_rel", rc.max_length_share, exempt="equal")
    sizes = c.groupby("pcode", sort=False).size()
    stats = {"n_prompts_content": int(len(sizes)), "n_prompts_single_candidate": int((sizes == 1).sum()),
             "n_prompts_no_margin": int((sizes > 1).sum() - eligible["pcode"].nunique()),
             "n_dropped_family_cap": int(n_dropped_family), "n_dropped_length_cap": int(n_dropped_length)}
    return selection(picked["pos_b"], picked["pos"], picked["score_b"], picked["score"], "content", False), stats


def cap_share(pairs: pd.DataFrame, col: str, cap: float, exempt: str | None = None) -> tuple[pd.DataFrame, int]:
    """Drop the lowest-margin pairs of any value of ``col`` whose share of the pairs exceeds ``cap``
    (``exempt``: a value never trimmed, e.g. equal lengths).

    A loop over the column's values (a handful of families or length relations), not over
    prompts: each round trims the most common value to the count that makes its share exactly
    ``cap`` given the others, until every share fits.
    """
    n0 = len(pairs)
    for _ in range(4 * max(1, pairs[col].nunique())):
        counts = pairs[col].value_counts()
        if exempt is not None:
            counts = counts.drop(exempt, errors="ignore")
        if counts.empty or counts.iloc[0] <= cap * len(pairs) + 1e-9:
            break
        value, n_v = counts.index[0], int(counts.iloc[0])
        rest = len(pairs) - n_v
        keep_n = int(np.floor(cap * rest / (1 - cap))) if cap < 1 else n_v
        mine = pairs[pairs[col] == value].sort_values(["margin", "pos"], ascending=[False, True], kind="mergesort")
        pairs = pd.concat([pairs[pairs[col] != value], mine.iloc[:keep_n]])
    return pairs, n0 - len(pairs)


def _format_pairs(pool: pd.DataFrame, score: pd.Series, rc, threshold: float) -> tuple[pd.DataFrame, dict]:
    good, bad = format_sides(pool, threshold, include_unusable=True)
    good, bad = good.to_numpy(), bad.to_numpy()
    pcode, fmt_score, cid_hash = pool["pcode"].to_numpy(), pool["fmt_score"].to_numpy(), pool["cid_hash"].to_numpy()
    g = pd.DataFrame({"pos": pool.index[good], "pcode": pcode[good],
                      "content": score.reindex(pool.index).to_numpy()[good], "fmt": fmt_score[good],
                      "tie": seeded_key(cid_hash[good], rc.seed, "tiebreak")})
    # The best content reply when it has a content score, else any format-ok reply.
    g["unscored"] = np.isnan(g["content"].to_numpy())
    best = first_k_per_prompt(g, ["unscored", "content", "tie"], [True, False, True], 1)
    b = pd.DataFrame({"pos": pool.index[bad], "pcode": pcode[bad], "fmt": fmt_score[bad],
                      "draw": seeded_key(cid_hash[bad], rc.seed, "format")})
    worst = first_k_per_prompt(b, ["draw"], [True], rc.format_pairs_per_prompt)
    cross = best.merge(worst, on="pcode", suffixes=("_c", "_r"))
    stats = {"n_format_ok": int(good.sum()), "n_format_failed_with_raw": int(bad.sum()),
             "n_prompts_with_format_failures": int(b["pcode"].nunique())}
    return selection(cross["pos_c"], cross["pos_r"], cross["fmt_c"], cross["fmt_r"], "format", True), stats


def family_codes(pool: pd.DataFrame, families: dict[str, str] | None) -> np.ndarray:
    """A family label per pool row, looked up once per generator (not per row)."""
    names = pool.groupby("gcode", sort=True)["generator"].first()
    table = np.full(int(names.index.max()) + 1 if len(names) else 0, "", dtype=object)
    for code, gen in names.items():
        table[code] = family_of(gen, families)
    return table[pool["gcode"].to_numpy()]


def run(pool: pd.DataFrame, rc, pairs_cfg):
    from persodpo.pairs.recipes import RecipeResult

    if not rc.on_policy:
        return run_pool(pool, rc, pairs_cfg)
    mine = pool["generator"].eq(rc.policy_generator).to_numpy()
    on_sel, on_scores, on_stats = _run_subset(pool, mine, rc, pairs_cfg)
    parts, scores = [on_sel], [on_scores]
    n_on = int((on_sel["pair_type"] == "content").sum())
    stats = {**on_stats, "on_policy": {"policy_generator": rc.policy_generator,
                                       "n_policy_candidates": int(mine.sum()), "n_content_pairs": n_on,
                                       "n_format_pairs": int((on_sel["pair_type"] == "format").sum()),
                                       "off_policy_share": rc.off_policy_share, "n_off_policy_pairs": 0}}
    if rc.off_policy_share > 0 and n_on:
        off_sel, off_scores, _ = _run_subset(pool, ~mine, rc, pairs_cfg)
        off = off_sel[off_sel["pair_type"] == "content"]
        want = int(np.floor(rc.off_policy_share * n_on / (1 - rc.off_policy_share) + 1e-9))
        off = off.assign(margin=off["score_chosen"] - off["score_rejected"]).sort_values(
            ["margin", "chosen", "rejected"], ascending=[False, True, True], kind="mergesort").head(want)
        parts.append(off.drop(columns="margin"))
        scores.append(off_scores)
        stats["on_policy"]["n_off_policy_pairs"] = int(len(off))
    if not mine.any():
        import logging

        logging.getLogger(__name__).warning("pairs.persodpo.on_policy: no candidate of generator %r: no on-policy pairs",
                                            rc.policy_generator)
    sel = pd.concat(parts, ignore_index=True)
    return RecipeResult(sel, pd.concat(scores).reindex(pool.index), stats)


def _run_subset(pool: pd.DataFrame, mask: np.ndarray, rc, pairs_cfg) -> tuple[pd.DataFrame, pd.Series, dict]:
    """The recipe on the rows in ``mask`` alone (scores normalised among them), its selection in
    positions of the whole pool."""
    original = pool.index.to_numpy()[mask]
    res = run_pool(pool[mask].reset_index(drop=True), rc, pairs_cfg)
    sel = res.selection.copy()
    sel["chosen"] = original[sel["chosen"].to_numpy()] if len(sel) else sel["chosen"]
    sel["rejected"] = original[sel["rejected"].to_numpy()] if len(sel) else sel["rejected"]
    return sel, pd.Series(res.scores.to_numpy(), index=original, dtype="float64"), res.stats


def run_pool(pool: pd.DataFrame, rc, pairs_cfg):
    """The recipe on the whole pool (on_policy aside)."""
    from persodpo.pairs.recipes import RecipeResult

    metrics = list(rc.weights)
    fmt_ok = pool["fmt_score"] >= pairs_cfg.format_threshold
    complete = pool[metrics].notna().all(axis=1)
    has_text = pool["has_text"]
    content_pool = fmt_ok & has_text & complete
    score, nstats = content_scores(pool, content_pool, rc.weights, rc.normalize)
    families = family_codes(pool, rc.generator_families)
    content, cstats = _content_pairs(pool, score, rc, families)
    parts = [content]
    fstats: dict = {}
    if rc.format_pairs:
        fmt, fstats = _format_pairs(pool, score, rc, pairs_cfg.format_threshold)
        parts.append(fmt)
    sel = pd.concat(parts, ignore_index=True) if any(len(p) for p in parts) else empty_selection()
    stats = {"n_candidates": int(len(pool)), "n_content_pool": int(content_pool.sum()),
             "n_excluded_format_failed": int((~fmt_ok).sum()),
             "n_excluded_null_metric": int((fmt_ok & has_text & ~complete).sum()),
             "n_excluded_no_text": int((fmt_ok & ~has_text).sum()),
             **nstats, **cstats, **fstats}
    return RecipeResult(sel, score.reindex(pool.index), stats)
