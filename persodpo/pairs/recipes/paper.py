"""The authors' two recipes, exactly as the shared README describes them (recipe steps 2-6).

1. Pool: valid and fallback outputs of every generator (unusable outputs are dropped).
2. Fallback (invalid-format) outputs get worst-case metric values (Coh 0, C -1, UE 0, PD 0).
3. Each metric is min-max normalised over the whole pool (a constant metric normalises to 0,
   as scikit-learn's MinMaxScaler does; the authors never had one).
4. ``length_prior``: ``0.15*(Coh + C + UE + PD) + 0.4*LP``, ``LP = clip(1 - words/110, 0, 1)``.
   ``perso``: ``0.14*Coh + 0.20*C + 0.18*UE + 0.16*PD + 0.32*I`` with
   ``I = round(max(0, 1 - (|words - avg| / avg)^2) + bonus, 3)``, ``avg`` the integer part of
   the pool's mean word count, ``bonus`` 0.3 when the regex ``\\{.*?"response"\\s*:\\s*".*?".*?\\}``
   (DOTALL) finds exactly one match in the *extracted text* and it parses as JSON with a
   ``response`` key. The text is the reply already taken out of its JSON wrapper, so the bonus
   practically never fires: the authors meant to reward valid JSON but measured the wrong string.
   We reproduce it (and count how often it fires) rather than fix it.
5. Thresholds: the global 40th and 60th percentiles of the score over the pool (linear
   interpolation). Per prompt, every output scoring >= p60 (chosen) x every output scoring
   <= p40 (rejected).
6. The prompt is the PersoBench instruction; replies are re-serialised as ``{"response": text}``
   (the stage renders them: this template's reply format is JSON).

Not in the README, decided here: a valid output with a null metric (our scorer could not score
it; the authors' data has none) is dropped and counted, not given worst-case values; a pair of
one candidate with itself, or of two equal scores (possible only when p40 == p60), is dropped and
counted. ``round`` is numpy's (vectorised; it can differ from Python's ``round`` in the third
decimal only for values a hair from a rounding tie).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from persodpo.pairs.select import cross_within_prompt, empty_selection, selection

TEMPLATE = "persobench-json-v1"
BONUS_RE = re.compile(r'\{.*?"response"\s*:\s*".*?".*?\}', re.DOTALL)


def json_bonus_fires(text: str) -> bool:
    """The authors' bonus condition on one text: exactly one regex match that parses as JSON
    with a ``response`` key."""
    matches = BONUS_RE.findall(text)
    if len(matches) != 1:
        return False
    try:
        obj = json.loads(matches[0])
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and "response" in obj


def _bonus(texts: pd.Series, positions: np.ndarray) -> tuple[np.ndarray, int]:
    """Whether the bonus fires for the texts at ``positions`` (and how many contain '"response"')."""
    # The regex needs '"response"' in the text: test that vectorised, run the regex on those few.
    maybe = texts.str.contains('"response"', regex=False).fillna(False).to_numpy(dtype=bool)[positions]
    fires = np.zeros(len(positions), dtype=bool)
    idx = np.flatnonzero(maybe)
    if len(idx):
        fires[idx] = [json_bonus_fires(t) for t in texts.iloc[positions[idx]]]
    return fires, int(maybe.sum())


def _pool_scores(pool: pd.DataFrame, rc) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(pool rows in the recipe, their normalised metrics, stats)."""
    metrics = list(rc.weights)
    status = pool["parse_status"]
    usable = (status.eq("valid") | status.eq("fallback")).to_numpy(dtype=bool) & pool["has_text"].to_numpy()
    usable = pd.Series(usable, index=pool.index)
    valid = usable & status.eq("valid")
    incomplete = valid & pool[metrics].isna().any(axis=1)
    in_pool = usable & ~incomplete
    rows = pool.loc[in_pool, [*metrics, "parse_status", "words"]]   # not the reply columns: a million strings
    values = rows[metrics].copy()
    fallback = rows["parse_status"].ne("valid").to_numpy(dtype=bool)
    for m in metrics:
        values.loc[fallback, m] = rc.worst_case[m]
    lo, hi = values.min(), values.max()
    span = hi - lo
    norm = (values - lo) / span.where(span > 0, 1.0)
    stats = {
        "n_candidates": int(len(pool)), "n_pool": int(in_pool.sum()), "n_pool_valid": int((in_pool & valid).sum()),
        "n_pool_fallback": int(fallback.sum()),
        "n_dropped_unusable": int((~usable).sum()), "n_dropped_null_metric": int(incomplete.sum()),
        "minmax": {m: [None if pd.isna(lo[m]) else float(lo[m]), None if pd.isna(hi[m]) else float(hi[m])]
                   for m in metrics},
    }
    return rows, norm, stats


def _content(norm: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    out = np.zeros(len(norm))
    for m, w in weights.items():
        out += w * norm[m].to_numpy(dtype="float64")
    return out


def length_prior_score(pool: pd.DataFrame, rc) -> tuple[pd.Series, dict]:
    rows, norm, stats = _pool_scores(pool, rc)
    lp = np.clip(1.0 - rows["words"].to_numpy(dtype="float64") / rc.max_words, 0.0, 1.0)
    score = _content(norm, rc.weights) + rc.length_prior_weight * lp
    return pd.Series(score, index=rows.index, dtype="float64"), stats


def perso_score(pool: pd.DataFrame, rc) -> tuple[pd.Series, dict]:
    rows, norm, stats = _pool_scores(pool, rc)
    words = rows["words"].to_numpy(dtype="float64")
    avg = int(words.mean()) if len(words) else 0
    if avg > 0:
        closeness = np.maximum(0.0, 1.0 - (np.abs(words - avg) / avg) ** 2)
    else:  # every text empty: no length to be close to (the authors' formula divides by zero)
        closeness = np.zeros(len(words))
    fires, looked_at = _bonus(pool["text"], rows.index.to_numpy())
    instructability = np.round(closeness + rc.json_bonus * fires, 3)
    score = _content(norm, rc.weights) + rc.instructability_weight * instructability
    stats.update({"avg_words": avg, "json_bonus_fired": int(fires.sum()),
                  "json_bonus_texts_with_response_key": looked_at,
                  "json_bonus_share": float(fires.mean()) if len(fires) else 0.0})
    return pd.Series(score, index=rows.index, dtype="float64"), stats


def threshold_pairs(pool: pd.DataFrame, score: pd.Series, low_pct: float, high_pct: float) -> tuple[pd.DataFrame, dict]:
    """Global percentiles, then per prompt every score >= high x every score <= low."""
    if score.empty:
        return empty_selection(), {"thresholds": None, "n_chosen_side": 0, "n_rejected_side": 0,
                                   "n_dropped_self_or_tie": 0}
    low, high = np.percentile(score.to_numpy(), [low_pct, high_pct])
    frame = pd.DataFrame({"pos": score.index.to_numpy(), "pcode": pool["pcode"].to_numpy()[score.index.to_numpy()],
                          "score": score.to_numpy()})
    chosen = frame[frame["score"] >= high]
    rejected = frame[frame["score"] <= low]
    cross = cross_within_prompt(chosen, rejected)
    keep = (cross["pos_c"] != cross["pos_r"]) & (cross["score_c"] > cross["score_r"])
    out = cross[keep]
    stats = {"thresholds": {f"p{low_pct:g}": float(low), f"p{high_pct:g}": float(high)},
             "n_chosen_side": int(len(chosen)), "n_rejected_side": int(len(rejected)),
             "n_dropped_self_or_tie": int((~keep).sum())}
    return selection(out["pos_c"], out["pos_r"], out["score_c"], out["score_r"], "content", False), stats


def _run(pool: pd.DataFrame, rc, scorer):
    from persodpo.pairs.recipes import RecipeResult

    score, stats = scorer(pool, rc)
    sel, tstats = threshold_pairs(pool, score, rc.low_percentile, rc.high_percentile)
    stats.update(tstats)
    return RecipeResult(sel, score.reindex(pool.index), stats)


def run_length_prior(pool: pd.DataFrame, rc, _pairs_cfg=None):
    return _run(pool, rc, length_prior_score)


def run_perso(pool: pd.DataFrame, rc, _pairs_cfg=None):
    return _run(pool, rc, perso_score)
