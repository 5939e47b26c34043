"""Is the trained model better than the base model, and by how much beyond noise?

Pure functions over the evaluation frame (``report.join``: one row per reply, ``model``,
``prompt_id``, ``words``, metric columns). Every model is compared with the base model on the
prompts both answered: per metric, the mean per-prompt difference with a bootstrap 95% interval
(prompts resampled, so the interval knows the prompts differ in difficulty), the win/tie/loss
rate, and the same difference over the prompts whose two replies fall in the same length bucket
(length-matched), so a model cannot win by answering longer. Metrics that only take 0 and 1 are
rates: reported with Wilson intervals, not as box plots of zeros and ones. A metric that could
not be computed is named with the reason its scorer recorded (``score_errors``).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd

TIE_TOLERANCE = 1e-9


def is_rate(values: pd.Series, name: str | None = None) -> bool:
    """A pass/fail metric, shown as a rate: one the score stage declares so (``format_ok``,
    ``length_ok``, ...), or any other whose values are 0 and 1 and nothing else. A judge's score
    is never one, even when every reply got the scale's 1."""
    from persodpo.score.compliance import PASS_FAIL_COLUMNS

    name = name if name is not None else values.name
    if name in PASS_FAIL_COLUMNS:
        return True
    if isinstance(name, str) and name.startswith("judge_"):
        return False
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 0 and set(v.unique()) == {0.0, 1.0}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate (exact enough at n = 10, unlike the normal one at 0 or 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_interval(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling its entries)."""
    d = np.asarray(diffs, dtype="float64")
    if len(d) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def per_prompt(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """prompt x model: the model's mean of ``metric`` on that prompt (several samples average)."""
    d = df.dropna(subset=[metric])
    return d.pivot_table(index="prompt_id", columns="model", values=metric, aggfunc="mean")


def paired_differences(df: pd.DataFrame, metrics: list[str], baseline: str, *, buckets: pd.Series | None = None,
                       n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (model other than ``baseline``, metric): prompts compared, mean difference
    (model - baseline) with its bootstrap 95% interval, win/tie/loss rates, and the mean
    difference over length-matched prompts (``buckets``: a length bucket per row of ``df``)."""
    rows = []
    models = [m for m in dict.fromkeys(df["model"]) if m != baseline]
    if baseline not in set(df["model"]):
        return pd.DataFrame(rows)
    matched = None
    if buckets is not None:
        b = df.assign(bucket=buckets).dropna(subset=["bucket"])
        # A prompt is length-matched for a model when its replies and the baseline's share one
        # bucket (with several samples: the commonest bucket of each).
        matched = b.groupby(["prompt_id", "model"])["bucket"].agg(lambda s: s.mode().iloc[0]).unstack()
    for model in models:
        for m in metrics:
            wide = per_prompt(df, m)
            if model not in wide or baseline not in wide:
                continue
            pair = wide[[model, baseline]].dropna()
            d = (pair[model] - pair[baseline]).to_numpy()
            n = len(d)
            row = {"model": model, "baseline": baseline, "metric": m, "n_prompts": n,
                   "mean_model": float(pair[model].mean()) if n else float("nan"),
                   "mean_baseline": float(pair[baseline].mean()) if n else float("nan"),
                   "diff": float(d.mean()) if n else float("nan")}
            row["ci_low"], row["ci_high"] = bootstrap_mean_interval(d, n_boot=n_boot, seed=seed)
            row["win"] = float((d > TIE_TOLERANCE).mean()) if n else float("nan")
            row["tie"] = float((np.abs(d) <= TIE_TOLERANCE).mean()) if n else float("nan")
            row["loss"] = float((d < -TIE_TOLERANCE).mean()) if n else float("nan")
            row["significant"] = bool(n > 1 and (row["ci_low"] > 0 or row["ci_high"] < 0))
            if matched is not None and model in matched and baseline in matched:
                same = matched[model].eq(matched[baseline]) & matched[model].notna()
                keep = pair.index.intersection(same[same].index)
                dm = (pair.loc[keep, model] - pair.loc[keep, baseline]).to_numpy()
                row["n_length_matched"] = len(dm)
                row["diff_length_matched"] = float(dm.mean()) if len(dm) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def rate_table(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per model and rate metric: successes, n, rate and its Wilson 95% interval."""
    rows = []
    for model, g in df.groupby("model", sort=False):
        for m in metrics:
            v = g[m].dropna()
            k, n = int((v == 1.0).sum()), len(v)
            lo, hi = wilson_interval(k, n)
            rows.append({"model": model, "metric": m, "successes": k, "n": n,
                         "rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def unavailable(scores: pd.DataFrame, models: pd.Series, metrics: list[str]) -> list[dict]:
    """Metrics with no value for some model: which, how many replies, and the commonest reason
    the scorer recorded. ``models``: the model of each row of ``scores``."""
    errors = [json.loads(e) if isinstance(e, str) and e else {} for e in scores.get("score_errors", [None] * len(scores))]
    out = []
    for m in metrics:
        missing = scores[m].isna().to_numpy() if m in scores else np.ones(len(scores), dtype=bool)
        for model in dict.fromkeys(models):
            rows = np.flatnonzero(missing & (models.to_numpy() == model))
            n = int((models == model).sum())
            if len(rows) == 0:
                continue
            reasons = Counter(str(errors[i].get(m, "no reason recorded")) for i in rows)
            reason, count = reasons.most_common(1)[0]
            out.append({"metric": m, "model": model, "missing": len(rows), "n": n, "all": len(rows) == n,
                        "reason": reason[:300], "reason_count": count})
    return out


def unavailable_lines(items: list[dict], only_all: bool = False) -> list[str]:
    """One sentence per metric and model that lacks values, e.g. ``judge_j1_persona (dpo): 72 of
    72 replies have no value: judge j1: InternalServerError ... (72)``."""
    lines = []
    for it in items:
        if only_all and not it["all"]:
            continue
        lines.append(f"{it['metric']} ({it['model']}): {it['missing']} of {it['n']} replies have no value: "
                     f"{it['reason']}" + ("" if it["reason_count"] == it["missing"] else
                                          f" ({it['reason_count']} of them)"))
    return lines
