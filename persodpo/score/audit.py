"""The judges' bias audit (pointwise part): kept in the score summary and manifest as
``judge_audit: {<judge>: {<dimension>: {...}}, "_panel": {<dimension>: {...}}}``.

Per judge and dimension:
  n_pointwise      scores that entered the panel
  length_spearman  Spearman of the score against the reply's words (LLM judges are known to
                   reward length; near 1 = the score mostly follows length)
  self_preference  mean standardised score (z over all this judge's scores, audit samples
                   included) on its own generator's replies minus on the others'. Measured even
                   when ``skip_own_generator`` is on: the judge still scores a deterministic
                   sample of its own generator's replies (``panel.audit_own_share``) for the
                   audit only; those scores never reach the panel. ``n_self`` = own replies seen.
Per dimension, under ``_panel``: ``krippendorff_alpha`` (ordinal) over the replies at least two
judges scored, and ``n_units``.

The driver keeps up to ``MAX_ROWS`` rows per judge and dimension (the first ones streamed),
enough for stable rank statistics without holding a large run.
"""

from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa

from persodpo.score.batch import WORDS_COLUMN, audit_column, judge_column

MAX_ROWS = 50_000


def ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        k = i
        while k + 1 < len(order) and xs[order[k + 1]] == xs[order[i]]:
            k += 1
        for m in range(i, k + 1):
            out[order[m]] = (i + k) / 2 + 1
        i = k + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson of the ranks); None under 3 pairs or when either side is constant."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def krippendorff_alpha_ordinal(units: list[list[float]]) -> float | None:
    """Krippendorff's alpha with the ordinal metric (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability"): units = the values the coders gave one item; items with under two
    values are not pairable and are left out. None when nothing is pairable or every value is
    the same (no disagreement is possible, alpha is undefined)."""
    units = [u for u in units if len(u) >= 2]
    if not units:
        return None
    # Coincidence matrix o[c][k]: each ordered pair of values within a unit, weighted 1/(m-1).
    o: Counter = Counter()
    for u in units:
        m = len(u)
        for i, a in enumerate(u):
            for j, b in enumerate(u):
                if i != j:
                    o[(a, b)] += 1.0 / (m - 1)
    values = sorted({v for u in units for v in u})
    n_c = {c: sum(o[(c, k)] for k in values) for c in values}
    n = sum(n_c.values())
    if len(values) < 2 or n <= 1:
        return None

    def delta(c: float, k: float) -> float:
        # Ordinal: (sum of the marginals from c to k, minus half of the two ends) squared.
        lo, hi = (c, k) if c <= k else (k, c)
        s = sum(n_c[g] for g in values if lo <= g <= hi)
        return (s - (n_c[c] + n_c[k]) / 2) ** 2

    d_o = sum(o[(c, k)] * delta(c, k) for c in values for k in values)
    d_e = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values) / (n - 1)
    return None if d_e == 0 else 1.0 - d_o / d_e


class Audit:
    """Accumulates the rows the audit needs from the stage's blocks (driver side)."""

    def __init__(self, judges: list, dims: list[str]):
        self.judges = [(j.name, j.generator) for j in judges]
        self.dims = dims
        # (judge, dim) -> list of (score, words, own, in_panel)
        self.rows: dict[tuple[str, str], list[tuple[float, float | None, bool, bool]]] = {
            (j, d): [] for j, _ in self.judges for d in dims}
        self.units: dict[str, list[list[float]]] = {d: [] for d in dims}

    def add(self, block: pa.Table) -> None:
        gens = block.column("generator").to_pylist()
        words = block.column(WORDS_COLUMN).to_pylist() if WORDS_COLUMN in block.column_names else [None] * len(gens)
        for d in self.dims:
            per_judge = {}
            for j, own_gen in self.judges:
                scores = block.column(judge_column(j, d)).to_pylist()
                audit = (block.column(audit_column(j, d)).to_pylist() if audit_column(j, d) in block.column_names
                         else [None] * len(gens))
                per_judge[j] = scores
                rows = self.rows[(j, d)]
                for r, (s, a) in enumerate(zip(scores, audit)):
                    if len(rows) >= MAX_ROWS:
                        break
                    v = s if s is not None else a
                    if v is not None:
                        rows.append((v, words[r], own_gen is not None and gens[r] == own_gen, s is not None))
            if len(self.units[d]) < MAX_ROWS:
                for r in range(len(gens)):
                    u = [per_judge[j][r] for j, _ in self.judges if per_judge[j][r] is not None]
                    if len(u) >= 2:
                        self.units[d].append(u)

    def summary(self) -> dict:
        out: dict[str, dict] = {}
        for j, own_gen in self.judges:
            out[j] = {}
            for d in self.dims:
                rows = self.rows[(j, d)]
                panel = [(v, w) for v, w, _, in_panel in rows if in_panel and w is not None]
                out[j][d] = {"n_pointwise": sum(1 for *_, p in rows if p),
                             "length_spearman": _round(spearman([v for v, _ in panel], [w for _, w in panel])),
                             "self_preference": _round(self_preference(rows)) if own_gen else None,
                             "n_self": sum(1 for _, _, own, _ in rows if own)}
        out["_panel"] = {d: {"krippendorff_alpha": _round(krippendorff_alpha_ordinal(self.units[d])),
                             "n_units": len(self.units[d])} for d in self.dims}
        return out


def self_preference(rows: list[tuple[float, float | None, bool, bool]]) -> float | None:
    vals = [v for v, *_ in rows]
    own = [v for v, _, o, _ in rows if o]
    other = [v for v, _, o, _ in rows if not o]
    if len(vals) < 2 or not own or not other:
        return None
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    if sd == 0:
        return 0.0
    return (sum(own) / len(own) - sum(other) / len(other)) / sd


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
