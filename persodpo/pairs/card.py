"""The data card: what the pairs teach, measured (``stats.json``, ``data_card.md``, PNG plots).

The numbers answer the questions the paper's recipe raises: does length decide the pairs
(share of pairs where the chosen reply is shorter, mean words chosen vs rejected), does the
source decide them (share of chosen and rejected per generator and family), do rejected replies
simply fail to parse, and which metrics vary at all and how much they follow length.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd

from persodpo.pairs.pool import family_of


def _share(series: pd.Series) -> dict[str, float]:
    if series.empty:
        return {}
    shares = series.value_counts(normalize=True, sort=False)
    return {str(k): round(float(v), 4) for k, v in sorted(shares.items(), key=lambda kv: str(kv[0])) if v > 0}


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return _num(np.corrcoef(a, b)[0, 1])


def generator_names(pool: pd.DataFrame) -> np.ndarray:
    """Generator name per ``gcode`` (looked up once per generator)."""
    names = pool.groupby("gcode", sort=True)["generator"].first()
    table = np.full(int(names.index.max()) + 1 if len(names) else 0, "", dtype=object)
    table[names.index.to_numpy()] = names.to_numpy(dtype=object)
    return table


def pair_frame(pool: pd.DataFrame, sel: pd.DataFrame, families: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per pair with what the card measures (lengths of what the pair shows)."""
    from persodpo.pairs.assemble import arrow_column, take
    from persodpo.words import word_counts

    c = sel["chosen"].to_numpy(dtype=np.int64)
    r = sel["rejected"].to_numpy(dtype=np.int64)
    words = pool["words"].to_numpy()
    rej_raw = sel["rejected_raw"].to_numpy(dtype=bool)
    # A format pair shows the raw output on the rejected side: count the words of what is shown
    # (once per candidate, not per pair).
    rejected_words = words[r].copy()
    raw_pos = np.unique(r[rej_raw])
    if len(raw_pos):
        raw_words = word_counts(take(arrow_column(pool["raw"]), raw_pos))
        rejected_words[rej_raw] = raw_words[np.searchsorted(raw_pos, r[rej_raw])]
    gen = generator_names(pool)
    fam = np.array([family_of(g, families) for g in gen], dtype=object)
    gcode = pool["gcode"].to_numpy()
    valid = pool["parse_status"].eq("valid").fillna(False).to_numpy(dtype=bool)
    return pd.DataFrame({
        "pair_type": sel["pair_type"].to_numpy(dtype=object),
        "margin": sel["score_chosen"].to_numpy(dtype="float64") - sel["score_rejected"].to_numpy(dtype="float64"),
        "words_chosen": words[c], "words_rejected": rejected_words,
        "chosen_generator": pd.Categorical.from_codes(gcode[c], categories=gen) if len(gen) else gen[:0],
        "rejected_generator": pd.Categorical.from_codes(gcode[r], categories=gen) if len(gen) else gen[:0],
        "chosen_family": fam[gcode[c]], "rejected_family": fam[gcode[r]],
        "chosen_valid": valid[c], "rejected_valid": valid[r],
    })


def _balance(pf: pd.DataFrame) -> dict:
    n = len(pf)
    if n == 0:
        return {"n_pairs": 0}
    wc, wr = pf["words_chosen"].to_numpy(), pf["words_rejected"].to_numpy()
    counts, edges = np.histogram(pf["margin"].to_numpy(), bins=20)
    return {
        "n_pairs": int(n),
        "chosen_shorter_share": round(float((wc < wr).mean()), 4),
        "chosen_longer_share": round(float((wc > wr).mean()), 4),
        "equal_length_share": round(float((wc == wr).mean()), 4),
        "mean_words_chosen": round(float(wc.mean()), 2), "mean_words_rejected": round(float(wr.mean()), 2),
        "rejected_failed_parsing_share": round(float((~pf["rejected_valid"]).mean()), 4),
        "chosen_failed_parsing_share": round(float((~pf["chosen_valid"]).mean()), 4),
        "chosen_by_generator": _share(pf["chosen_generator"]), "rejected_by_generator": _share(pf["rejected_generator"]),
        "chosen_by_family": _share(pf["chosen_family"]), "rejected_by_family": _share(pf["rejected_family"]),
        "margin": {"mean": _num(pf["margin"].mean()), "median": _num(pf["margin"].median()),
                   "min": _num(pf["margin"].min()), "max": _num(pf["margin"].max()),
                   "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}},
    }


def metric_stats(pool: pd.DataFrame, columns: list[str], recipe_score: pd.Series) -> dict:
    """Per metric (raw values, over the candidates that have one): variance and correlation with length."""
    out = {}
    words = pool["words"].to_numpy(dtype="float64")
    for m in columns:
        x = pool[m].to_numpy(dtype="float64")
        ok = ~np.isnan(x)
        xs = x[ok]
        out[m] = {"n": int(ok.sum()), "mean": _num(xs.mean()) if len(xs) else None,
                  "variance": _num(xs.var(ddof=1)) if len(xs) > 1 else None,
                  "share_above_0.95_of_max": _num((xs >= 0.95 * xs.max()).mean()) if len(xs) and xs.max() > 0 else None,
                  "corr_with_words": _corr(xs, words[ok])}
    s = recipe_score.to_numpy(dtype="float64")
    ok = ~np.isnan(s)
    out["recipe_score"] = {"n": int(ok.sum()), "mean": _num(s[ok].mean()) if ok.any() else None,
                           "variance": _num(s[ok].var(ddof=1)) if ok.sum() > 1 else None,
                           "corr_with_words": _corr(s[ok], words[ok])}
    return out


def card_stats(pool: pd.DataFrame, sel: pd.DataFrame, *, recipe: str, recipe_stats: dict, recipe_score: pd.Series,
               metric_columns: list[str], families: dict[str, str] | None = None) -> dict:
    pf = pair_frame(pool, sel, families)
    per_prompt = pd.Series(pool["pcode"].to_numpy()[sel["chosen"].to_numpy()]).value_counts()
    status = pool["parse_status"].value_counts().to_dict()
    return {
        "recipe": recipe,
        "n_pairs": int(len(sel)),
        "by_pair_type": {str(k): int(v) for k, v in pf["pair_type"].value_counts().sort_index().items()},
        "n_prompts": int(pool["pcode"].nunique()),
        "n_prompts_with_pairs": int(len(per_prompt)),
        "pairs_per_prompt": {"mean": _num(per_prompt.mean()) if len(per_prompt) else None,
                             "max": int(per_prompt.max()) if len(per_prompt) else 0},
        "n_candidates": int(len(pool)),
        "candidates_by_parse_status": {str(k): int(v) for k, v in status.items()},
        "balance": _balance(pf),
        "balance_by_pair_type": {str(t): _balance(g) for t, g in pf.groupby("pair_type")},
        "metrics": metric_stats(pool, metric_columns, recipe_score),
        "recipe_stats": recipe_stats,
    }, pf


# -- plots --------------------------------------------------------------------------------------

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _hist(ax, values: np.ndarray, bins, **kw) -> None:
    # np.histogram + stairs: matplotlib's own hist is slow on a million values.
    counts, edges = np.histogram(values, bins=bins)
    ax.stairs(counts, edges, fill=True, alpha=0.6, **kw)


def plots(pf: pd.DataFrame, recipe_score: pd.Series, stats: dict) -> dict[str, bytes]:
    """PNG bytes by file name (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for t, g in pf.groupby("pair_type"):
        _hist(ax, g["margin"].to_numpy(), 30, label=f"{t} ({len(g)})")
    ax.set(title=f"{stats['recipe']}: margin (score chosen - score rejected)", xlabel="margin", ylabel="pairs")
    if len(pf):
        ax.legend()
    out["margins.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(pf):
        top = int(max(pf["words_chosen"].max(), pf["words_rejected"].max())) + 2
        bins = np.linspace(0, top, 40)
        _hist(ax, pf["words_chosen"].to_numpy(), bins, label=f"chosen (mean {pf['words_chosen'].mean():.1f})")
        _hist(ax, pf["words_rejected"].to_numpy(), bins, label=f"rejected (mean {pf['words_rejected'].mean():.1f})")
        ax.legend()
    share = stats["balance"].get("chosen_shorter_share")
    ax.set(title=f"reply length in words (chosen shorter in {share if share is not None else '-'} of pairs)",
           xlabel="words", ylabel="pairs")
    out["lengths.png"] = _png(fig)

    b = stats["balance"]
    gens = sorted(set(b.get("chosen_by_generator", {})) | set(b.get("rejected_by_generator", {})))
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(gens))))
    if gens:
        y = np.arange(len(gens))
        ax.barh(y - 0.2, [b["chosen_by_generator"].get(g, 0) for g in gens], height=0.4, label="chosen")
        ax.barh(y + 0.2, [b["rejected_by_generator"].get(g, 0) for g in gens], height=0.4, label="rejected")
        ax.set_yticks(y, gens)
        ax.legend()
    ax.set(title="share of chosen / rejected per generator", xlabel="share of pairs")
    out["generators.png"] = _png(fig)

    s = recipe_score.dropna().to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(s):
        _hist(ax, s, 50, color="grey")
    for i, (name, v) in enumerate(((stats.get("recipe_stats") or {}).get("thresholds") or {}).items()):
        ax.axvline(v, color="red", linestyle="--")
        # The low threshold is labelled left of its line, the high one right of it.
        ax.text(v, ax.get_ylim()[1] * (0.92 - 0.08 * i), f" {name}={v:.4f} ", color="red", fontsize=8,
                ha="right" if i == 0 else "left")
    ax.set(title=f"{stats['recipe']}: candidate scores", xlabel="score", ylabel="candidates")
    out["scores.png"] = _png(fig)
    return out


# -- markdown -----------------------------------------------------------------------------------

def _table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(stats: dict, *, config: dict, versions: dict, inputs: dict, images: list[str]) -> str:
    b = stats["balance"]
    rs = stats.get("recipe_stats") or {}
    parts = [f"# Data card: pairs from recipe `{stats['recipe']}`", "",
             f"{stats['n_pairs']} pairs over {stats['n_prompts_with_pairs']} of {stats['n_prompts']} prompts "
             f"({stats['n_candidates']} candidates). Inputs: " + ", ".join(f"{k} `{v}`" for k, v in inputs.items()) + ".",
             "", f"Prompt template `{stats.get('template')}` (word limit {stats.get('word_limit')}); "
                 f"format signal: `{stats.get('format_signal')}`.",
             "", "## Counts", "",
             _table([(t, n) for t, n in stats["by_pair_type"].items()], ("pair type", "pairs")), "",
             _table([(k, v) for k, v in stats["candidates_by_parse_status"].items()], ("candidate parse status", "candidates"))]
    if rs.get("thresholds"):
        parts += ["", "## Thresholds", "", _table([(k, f"{v:.6f}") for k, v in rs["thresholds"].items()],
                                                   ("percentile of the score over the pool", "value"))]
    if rs.get("pairwise_verification"):
        v = rs["pairwise_verification"]
        parts += ["", "## Pairwise verification", "",
                  f"{v['checked']} content pairs checked against the pairwise judgments (both orders); {v['kept']} "
                  f"kept, {v['dropped_total']} dropped:", "",
                  _table([(k, n) for k, n in v["dropped"].items()], ("reason", "pairs dropped"))]
    if rs.get("on_policy"):
        o = rs["on_policy"]
        parts += ["", "## On-policy pairs (iterative DPO)", "",
                  f"Pairs among the {o['n_policy_candidates']} replies of the policy `{o['policy_generator']}` "
                  f"(the previous round's model): {o['n_content_pairs']} content and {o['n_format_pairs']} format "
                  f"pairs; {o['n_off_policy_pairs']} off-policy content pairs mixed in (off_policy_share "
                  f"{o['off_policy_share']})."]
    if "json_bonus_fired" in rs:
        parts += ["", f"JSON bonus: fired for {rs['json_bonus_fired']} of {rs.get('n_pool')} outputs "
                      f"({rs.get('json_bonus_texts_with_response_key')} extracted texts contain `\"response\"` at all). "
                      f"It is computed on the already-extracted reply, so it (almost) never fires. "
                      f"Mean-length target avg = {rs.get('avg_words')} words."]
    if b.get("n_pairs"):
        rows = []
        for t, bb in [("all", b), *stats["balance_by_pair_type"].items()]:
            rows.append((t, bb["n_pairs"], bb["chosen_shorter_share"], bb["chosen_longer_share"], bb["mean_words_chosen"],
                         bb["mean_words_rejected"], bb["rejected_failed_parsing_share"], bb["chosen_failed_parsing_share"],
                         f"{bb['margin']['mean']:.4f}"))
        parts += ["", "## Balance", "", _table(rows, ("pairs", "n", "chosen shorter", "chosen longer", "words chosen",
                                                      "words rejected", "rejected failed parsing",
                                                      "chosen failed parsing", "mean margin"))]
        gens = sorted(set(b["chosen_by_generator"]) | set(b["rejected_by_generator"]))
        parts += ["", "### Per generator", "", _table(
            [(g, b["chosen_by_generator"].get(g, 0), b["rejected_by_generator"].get(g, 0)) for g in gens],
            ("generator", "share of chosen", "share of rejected"))]
        fams = sorted(set(b["chosen_by_family"]) | set(b["rejected_by_family"]))
        parts += ["", _table([(f, b["chosen_by_family"].get(f, 0), b["rejected_by_family"].get(f, 0)) for f in fams],
                             ("family", "share of chosen", "share of rejected"))]
        for t, bb in stats["balance_by_pair_type"].items():
            h = bb["margin"]["histogram"]
            parts += ["", f"### Margin histogram ({t} pairs)", "", _table(
                [(f"{h['edges'][i]:.4f} .. {h['edges'][i + 1]:.4f}", c) for i, c in enumerate(h["counts"]) if c],
                ("margin", "pairs"))]
    mrows = [(m, v["n"], None if v["variance"] is None else f"{v['variance']:.6g}",
              None if v["corr_with_words"] is None else f"{v['corr_with_words']:.3f}")
             for m, v in stats["metrics"].items()]
    parts += ["", "## Metrics (raw values; recipe_score: the recipe's score over its pool)", "",
              _table(mrows, ("metric", "n", "variance", "correlation with words"))]
    parts += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    parts += ["", "## Recipe statistics", "", "```json", json.dumps(rs, indent=2, sort_keys=True, default=str), "```",
              "", "## Configuration (the pairs section)", "", "```json",
              json.dumps(config, indent=2, sort_keys=True, default=str), "```",
              "", "## Versions", "", "```json", json.dumps(versions, indent=2, sort_keys=True), "```", ""]
    return "\n".join(parts)
