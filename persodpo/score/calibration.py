"""A calibrated judge panel: each judge is put on a common scale before the panel averages them.

Judges differ in offset and spread (one gives 4 where another gives 3; one uses 1..5, another
2..4). A raw mean is fine only while every candidate gets every judge. It does not: a judge
skips its own generator (``panel.skip_own_generator``), a request fails, the budget stops. Then
the candidates some judges skipped carry the other judges' calibration, and inside a prompt the
pairs recipe reads that gap as a quality gap between generators.

**Which mapping, and why.** Per judge and dimension an affine map ``z = (s - mean_j) / sd_j``,
fitted on the candidates **every** judge scored on that dimension (the common set), then put
back on the panel's scale as ``ref_mean + ref_sd * z`` (``ref_*`` = the judges' average mean
and sd on that same set). We fit on the common set rather than standardising each judge over
all the candidates it scored, because those populations differ exactly where the bias comes
from: a judge that skips a strong generator has a lower mean over what it saw, so its z-scores
would be inflated relative to a judge that saw everything, and the skipped generator would
again be shifted. On the common set every judge is measured on the same replies, so the maps
differ only by the judges' calibration. When the common set is too small (under
``MIN_COMMON`` rows or a judge constant on it) each judge's own run statistics are used and the
manifest says so (``fitted_on: each_judge``). A judge constant everywhere has no spread to
map: it adds z = 0 (no preference) to the rows it scored.

With one judge the map is the identity (the panel is its raw score). The raw per-judge columns
(``judge_<judge>_<dim>``) are never changed; ``judge_<dim>_agreement`` stays on raw scores.

The fit needs the whole run, so the driver accumulates sufficient statistics per block
(``PanelStats``) and applies the map to the panel columns before writing (``apply``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from persodpo.score.batch import judge_column

MIN_COMMON = 5   # rows in the common set below which a fitted mean/sd is too noisy to trust


def _values(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(float)   # nulls -> nan


@dataclass
class _Moments:
    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    def add(self, v: np.ndarray) -> None:
        self.n += int(v.size)
        self.s += float(v.sum())
        self.ss += float((v * v).sum())

    def mean_sd(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        mean = self.s / self.n
        var = max(0.0, (self.ss - self.n * mean * mean) / (self.n - 1))
        return mean, math.sqrt(var)


@dataclass
class PanelStats:
    """Sufficient statistics per (dimension, judge): over the common set and over all its scores."""

    judges: list[str]
    dims: list[str]
    common: dict = field(default_factory=dict)
    own: dict = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        for d in self.dims:
            vals = {j: _values(table, judge_column(j, d)) for j in self.judges}
            every = np.logical_and.reduce([~np.isnan(v) for v in vals.values()])
            for j, v in vals.items():
                self.common.setdefault((d, j), _Moments()).add(v[every])
                self.own.setdefault((d, j), _Moments()).add(v[~np.isnan(v)])

    def fit(self) -> dict:
        """{dim: {"fitted_on", "n_common", "ref_mean", "ref_sd", "judges": {j: {"mean", "sd"}}}};
        a dimension without a usable map (no judge with spread) is left out (raw mean)."""
        out: dict[str, dict] = {}
        for d in self.dims:
            n_common = self.common[(d, self.judges[0])].n if self.judges else 0
            fits = {j: self.common[(d, j)].mean_sd() for j in self.judges}
            fitted_on = "common"
            if n_common < MIN_COMMON or any(f is None or f[1] == 0 for f in fits.values()):
                fits = {j: self.own[(d, j)].mean_sd() for j in self.judges}
                fitted_on = "each_judge"
            spread = [f for f in fits.values() if f is not None and f[1] > 0]
            if not spread:
                continue
            out[d] = {"fitted_on": fitted_on, "n_common": n_common,
                      "ref_mean": sum(f[0] for f in spread) / len(spread),
                      "ref_sd": sum(f[1] for f in spread) / len(spread),
                      "judges": {j: ({"mean": f[0], "sd": f[1]} if f is not None else None) for j, f in fits.items()}}
        return out


def calibrated(value: float, fit: dict, judge: str) -> float:
    """One judge's raw score on the panel's common scale (``fit`` = one dimension of ``PanelStats.fit``)."""
    j = fit["judges"].get(judge)
    if j is None or j["sd"] == 0:
        return fit["ref_mean"]          # no spread (or too few scores) to map: no preference either way
    return fit["ref_mean"] + fit["ref_sd"] * (value - j["mean"]) / j["sd"]


def apply(table: pa.Table, fits: dict, judges: list[str]) -> pa.Table:
    """Recompute ``judge_<dim>`` from the raw per-judge columns with the fitted maps (mean over
    the judges that scored each row; rows no judge scored stay null, with their reason)."""
    for d, fit in fits.items():
        name = f"judge_{d}"
        if name not in table.column_names:
            continue
        mapped = []
        for j in judges:
            v = _values(table, judge_column(j, d))
            jf = fit["judges"].get(j)
            if jf is None or jf["sd"] == 0:
                mapped.append(np.where(np.isnan(v), np.nan, fit["ref_mean"]))
            else:
                mapped.append(fit["ref_mean"] + fit["ref_sd"] * (v - jf["mean"]) / jf["sd"])
        stack = np.vstack(mapped)
        count = (~np.isnan(stack)).sum(axis=0)
        with np.errstate(invalid="ignore"):
            mean = np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
        arr = pa.array(mean, type=pa.float64(), from_pandas=True)   # nan -> null
        table = table.set_column(table.column_names.index(name), name, arr)
    return table
