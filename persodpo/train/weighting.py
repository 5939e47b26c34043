"""Margin-weighted DPO: each pair's loss multiplied by a function of its score margin.

Margins of different pair types live on different scales (a format pair's margin is 1.0 by
construction, a content pair's is in per-prompt z units), so the weights are normalised within
each ``pair_type``: clipped to ``[lo, hi]`` so one outlier margin cannot dominate a batch, with
the scale chosen so that the clipped weights of every type have mean exactly 1 (the learning rate
keeps its meaning, and neither type outweighs the other by construction).

    none     w = 1
    linear   w = c * margin                    (c per pair type: mean 1 after clipping)
    sigmoid  w = c * sigmoid(margin / scale)

What ``sigmoid`` does to the spread: margins are >= 0, so sigmoid(margin / scale) lies in
[0.5, 1): the largest weight is at most twice the smallest before clipping, whatever the margins.
It is a gentle emphasis that saturates for margins a few ``scale`` above 0; ``linear`` keeps the
full spread (bounded by ``[lo, hi]``).
"""

from __future__ import annotations

import numpy as np


def normalise_clipped(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip(c * raw, lo, hi)`` with ``c`` such that the mean is 1 (bisection: the mean grows
    with ``c``). Needs ``lo <= 1 <= hi``; a group whose raw values are all 0 gets weight 1."""
    if raw.size == 0:
        return raw
    if not raw.max() > 0:
        return np.ones_like(raw)

    def mean_at(c: float) -> float:
        return float(np.clip(c * raw, lo, hi).mean())

    c_lo, c_hi = 0.0, 1.0 / raw.mean()
    for _ in range(200):  # widen until the mean reaches 1 (it may not, if most raw values are 0)
        if mean_at(c_hi) >= 1.0:
            break
        c_hi *= 2.0
    for _ in range(100):
        mid = (c_lo + c_hi) / 2
        if mean_at(mid) < 1.0:
            c_lo = mid
        else:
            c_hi = mid
    return np.clip(c_hi * raw, lo, hi)


def margin_weights(margins, mode: str = "none", *, scale: float = 1.0, lo: float = 0.1,
                   hi: float = 10.0, groups=None) -> np.ndarray:
    """Per-pair weights (float64) for ``margins`` (finite, >= 0: chosen scored at least as high),
    normalised within each value of ``groups`` (the pairs' ``pair_type``; None: one group)."""
    m = np.asarray(margins, dtype=np.float64)
    if mode == "none":
        return np.ones_like(m)
    if m.size == 0:
        return m
    if not lo <= 1.0 <= hi:
        raise ValueError(f"weight bounds [{lo}, {hi}] must contain 1 (the mean weight)")
    if not np.all(np.isfinite(m)):
        raise ValueError("margins must be finite for margin weighting")
    if np.any(m < 0):
        raise ValueError("margins must be >= 0 (a negative margin means the rejected reply scored higher)")
    if mode == "linear":
        raw = m
    elif mode == "sigmoid":
        raw = 1.0 / (1.0 + np.exp(-m / scale))
    else:
        raise ValueError(f"unknown margin weighting {mode!r}; known: none, linear, sigmoid")
    if not raw.max() > 0:
        raise ValueError("every margin is 0: margin weighting is undefined (use margin_weighting=none)")
    g = np.zeros(m.size, dtype=object) if groups is None else np.asarray(groups, dtype=object)
    if g.shape != m.shape:
        raise ValueError(f"{g.size} group labels for {m.size} margins")
    out = np.empty_like(raw)
    for label in dict.fromkeys(g.tolist()):
        idx = g == label
        out[idx] = normalise_clipped(raw[idx], lo, hi)
    return out
