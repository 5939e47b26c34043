"""Margin-weighted DPO: each pair's loss multiplied by a function of its score margin.

The weights are mean-normalised over the training set, so the learning rate keeps its meaning
(mean weight 1) and only the relative emphasis between pairs changes, then clipped so one pair
with an outlier margin cannot dominate a batch.

    none     w = 1
    linear   w = margin / mean(margin)
    sigmoid  w = s / mean(s),  s = sigmoid(margin / scale)   (saturates for large margins)
"""

from __future__ import annotations

import numpy as np


def margin_weights(margins, mode: str = "none", *, scale: float = 1.0, lo: float = 0.1,
                   hi: float = 10.0) -> np.ndarray:
    """Per-pair weights (float64) for ``margins`` (finite, >= 0: chosen scored at least as high)."""
    m = np.asarray(margins, dtype=np.float64)
    if mode == "none":
        return np.ones_like(m)
    if m.size == 0:
        return m
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
    mean = raw.mean()
    if mean <= 0:
        raise ValueError("every margin is 0: margin weighting is undefined (use margin_weighting=none)")
    return np.clip(raw / mean, lo, hi)
