"""Evaluation tables and the run report: pure functions over pandas, plots with matplotlib (Agg).

Every score is reported beside the failure ratio and the mean reply length, and again within
length buckets (the same word-count buckets for every model), so a model cannot look better just
by answering shorter or by failing the format more often.
"""

from __future__ import annotations

import io
import math
from typing import Iterable

import numpy as np
import pandas as pd

BASE_COLUMNS = {"candidate_id", "prompt_id", "generator", "score_errors", "judge_tokens", "judge_cost_usd"}


def metric_columns(scores: pd.DataFrame) -> list[str]:
    """Float metric columns of a scores table (everything that is not a contract base column),
    less bookkeeping a reader does not compare models on: the judge panel's counts and agreement,
    and the four parts of ``format_ok`` (the failure ratio already shows format)."""
    def shown(c: str) -> bool:
        if c.endswith(("_n", "_agreement")) and c.startswith("judge_"):
            return False
        return not (c.startswith("format_") and c != "format_ok")

    return [c for c in scores.columns
            if c not in BASE_COLUMNS and pd.api.types.is_numeric_dtype(scores[c]) and shown(c)]


def words(text: pd.Series) -> pd.Series:
    from persodpo.words import word_counts

    return pd.Series(word_counts(text), index=text.index, dtype=int)


def join(candidates: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: model, parse outcome, words, metrics."""
    cols = ["candidate_id", *metric_columns(scores)]
    df = candidates[["candidate_id", "prompt_id", "generator", "text", "parse_ok", "parse_status"]].merge(
        scores[cols], on="candidate_id", how="left")
    df = df.rename(columns={"generator": "model"})
    df["words"] = words(df["text"])
    df["usable"] = df["text"].notna()
    return df


def model_table(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per model: n, error ratio (the request failed: no reply at all), format failure ratio (of
    the replies that came back, those that did not follow the requested format), unusable ratio,
    mean words, metric means with a 95% normal-approximation confidence half-width."""
    rows = []
    for model, g in df.groupby("model", sort=False):
        errors = g["parse_status"].eq("error")
        answered = g[~errors]
        fmt_fail = 1.0 - answered["parse_ok"].fillna(False).astype(float).mean() if len(answered) else float("nan")
        row = {"model": model, "n": len(g), "error_ratio": float(errors.mean()), "format_failure_ratio": fmt_fail,
               "unusable_ratio": 1.0 - g["usable"].astype(float).mean(),
               "mean_words": g.loc[g["usable"], "words"].mean() if g["usable"].any() else float("nan")}
        for m in metrics:
            v = g[m].dropna()
            row[m] = v.mean() if len(v) else float("nan")
            row[f"{m}_ci95"] = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
            row[f"{m}_n"] = len(v)
        rows.append(row)
    return pd.DataFrame(rows)


def length_buckets(df: pd.DataFrame, n_buckets: int = 4) -> pd.Series:
    """Word-count buckets from quantiles of all usable replies pooled across models."""
    usable = df.loc[df["usable"], "words"]
    if usable.empty:
        return pd.Series(pd.NA, index=df.index, dtype="object")
    edges = np.unique(np.quantile(usable, np.linspace(0, 1, n_buckets + 1)))
    if len(edges) < 2:
        edges = np.array([usable.min(), usable.min() + 1])
    edges[0], edges[-1] = -np.inf, np.inf
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lo_s = "0" if lo == -np.inf else str(int(math.floor(lo)) + 1)
        labels.append(f"{lo_s}+" if hi == np.inf else f"{lo_s}-{int(math.floor(hi))}")
    out = pd.cut(df["words"], bins=edges, labels=labels, include_lowest=True).astype("object")
    return out.where(df["usable"])


def length_controlled(df: pd.DataFrame, metrics: list[str], n_buckets: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model x bucket x metric means, per model length-controlled mean).

    The length-controlled mean averages a model's per-bucket means over the buckets where every
    model has replies, each bucket weighted equally: a model gains nothing from moving its
    replies into a shorter bucket where the metric is easier."""
    d = df.assign(bucket=length_buckets(df, n_buckets)).dropna(subset=["bucket"])
    per_bucket = d.groupby(["model", "bucket"], sort=False)[metrics].mean().reset_index()
    counts = d.groupby(["model", "bucket"], sort=False).size().rename("n").reset_index()
    per_bucket = per_bucket.merge(counts, on=["model", "bucket"])
    models = d["model"].unique()
    shared = [b for b, g in per_bucket.groupby("bucket") if set(g["model"]) >= set(models)]
    lc = per_bucket[per_bucket["bucket"].isin(shared)].groupby("model", sort=False)[metrics].mean().reset_index()
    lc["buckets_used"] = len(shared)
    return per_bucket, lc


def length_correlation(df: pd.DataFrame, metrics: list[str]) -> dict[str, float]:
    """Spearman correlation of each metric with reply length (usable replies, all models)."""
    d = df[df["usable"]]
    out = {}
    for m in metrics:
        v = d[["words", m]].dropna()
        out[m] = float(v["words"].rank().corr(v[m].rank())) if len(v) > 2 and v[m].nunique() > 1 else float("nan")
    return out


# -- rendering ------------------------------------------------------------------------------

def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        return "–" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def markdown_table(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    cols = columns or list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_metric_distributions(df: pd.DataFrame, metrics: list[str]) -> bytes:
    """One panel per metric that has values: box plots for scores, bars with Wilson 95% intervals
    for rates (0/1 metrics). Metrics without any value are left out (the report names them and
    why), so no panel is empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from persodpo.evaluate.compare import is_rate, wilson_interval

    metrics = [m for m in metrics if df[m].notna().any()]
    n = max(1, len(metrics))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, layout="constrained")
    models = list(dict.fromkeys(df["model"]))
    x = np.arange(1, len(models) + 1)
    for ax, m in zip(axes.flat, metrics):
        data = [df.loc[df["model"] == mod, m].dropna().to_numpy() for mod in models]
        if is_rate(df[m]):
            rates = np.array([d.mean() if len(d) else np.nan for d in data])
            ci = np.array([wilson_interval(int(d.sum()), len(d)) for d in data])
            ax.bar(x, rates, color="#7a9cc6")
            ax.errorbar(x, rates, yerr=[rates - ci[:, 0], ci[:, 1] - rates], fmt="none", ecolor="black", capsize=3)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{m} (rate, 95% CI)", fontsize=9)
        else:
            ax.boxplot([d if len(d) else [np.nan] for d in data], showmeans=True)
            ax.set_title(m, fontsize=9)
        ax.set_xticks(x, [mod[:18] for mod in models], rotation=30, ha="right", fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("metrics per model (held-out replies)", fontsize=10)
    return _png(fig)


def plot_paired_differences(paired: pd.DataFrame) -> bytes | None:
    """Each model's mean per-prompt difference to the base model, per metric, with its bootstrap
    95% interval (a forest plot: an interval that crosses 0 is no evidence either way)."""
    if paired.empty or paired["diff"].notna().sum() == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = paired.dropna(subset=["diff"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.38 * len(p)), layout="constrained")
    y = np.arange(len(p))[::-1]
    lo = (p["diff"] - p["ci_low"]).fillna(0).to_numpy()
    hi = (p["ci_high"] - p["diff"]).fillna(0).to_numpy()
    colors = ["#2b7a3d" if s and d > 0 else "#b03a2e" if s else "#555555"
              for s, d in zip(p["significant"], p["diff"])]
    for yi, d, a, b, c in zip(y, p["diff"], lo, hi, colors):
        ax.errorbar([d], [yi], xerr=[[a], [b]], fmt="o", color=c, ecolor=c, capsize=3)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(y, [f"{r.metric} ({r.model})" for r in p.itertuples()], fontsize=8)
    ax.set_xlabel(f"mean per-prompt difference to {p['baseline'].iloc[0]} (bootstrap 95% CI)")
    ax.set_title("trained vs base, paired by prompt", fontsize=10)
    return _png(fig)


def plot_length_histograms(df: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    usable = df[df["usable"]]
    hi = max(10, int(usable["words"].max()) if len(usable) else 10)
    bins = np.linspace(0, hi, 30)
    for model, g in usable.groupby("model", sort=False):
        ax.hist(g["words"], bins=bins, histtype="step", label=f"{model} (mean {g['words'].mean():.0f})")
    ax.set_xlabel("words per reply")
    ax.set_ylabel("replies")
    ax.legend(fontsize=7)
    ax.set_title("reply length per model")
    return _png(fig)


def plot_training_curves(history: Iterable[dict]) -> bytes | None:
    h = pd.DataFrame(list(history))
    if h.empty or "step" not in h:
        return None
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins") if k in h]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False, layout="constrained")
    for ax, k in zip(axes.flat, keys):
        d = h[["step", k]].dropna()
        ax.plot(d["step"], d[k], marker=".")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
    fig.suptitle("DPO training", fontsize=10)
    return _png(fig)
