"""Vectorised building blocks of pair selection (no Python loop over prompts).

Candidates are identified by their position in the pool frame; prompts by ``pcode``. A
selection is a frame with ``chosen`` and ``rejected`` positions, ``score_chosen``,
``score_rejected``, ``pair_type`` and ``rejected_raw`` (the rejected reply is the raw output,
for format pairs).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SELECTION_COLUMNS = ("chosen", "rejected", "score_chosen", "score_rejected", "pair_type", "rejected_raw")


def empty_selection() -> pd.DataFrame:
    return pd.DataFrame({"chosen": pd.Series(dtype="int64"), "rejected": pd.Series(dtype="int64"),
                         "score_chosen": pd.Series(dtype="float64"), "score_rejected": pd.Series(dtype="float64"),
                         "pair_type": pd.Series(dtype=object), "rejected_raw": pd.Series(dtype=bool)})


def seeded_key(hashes: np.ndarray, seed: int, salt: str = "") -> np.ndarray:
    """A deterministic pseudo-random uint64 per id hash: the same ids and seed give the same
    order on any machine, another seed or salt an independent one (splitmix64 finaliser)."""
    mix = np.uint64(int(hashlib.sha256(f"persodpo-pairs:{seed}:{salt}".encode()).hexdigest()[:16], 16))
    z = np.asarray(hashes, dtype=np.uint64) ^ mix
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cross_within_prompt(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """Every (left, right) row pair with the same ``pcode`` (a hash join: per-prompt cross
    product without a loop). Columns get suffixes ``_c`` (left) and ``_r`` (right)."""
    return left.merge(right, on="pcode", suffixes=("_c", "_r"))


def first_k_per_prompt(frame: pd.DataFrame, order: list[str], ascending: list[bool], k: int | None) -> pd.DataFrame:
    """The first ``k`` rows of each prompt after sorting by ``order`` (all rows if k is None)."""
    if k is None or frame.empty:
        return frame
    ordered = frame.sort_values(["pcode", *order], ascending=[True, *ascending], kind="mergesort")
    return ordered[ordered.groupby("pcode", sort=False).cumcount() < k]


def selection(chosen, rejected, score_chosen, score_rejected, pair_type: str, rejected_raw: bool) -> pd.DataFrame:
    n = len(chosen)
    return pd.DataFrame({
        "chosen": np.asarray(chosen, dtype="int64"), "rejected": np.asarray(rejected, dtype="int64"),
        "score_chosen": np.asarray(score_chosen, dtype="float64"),
        "score_rejected": np.asarray(score_rejected, dtype="float64"),
        "pair_type": np.full(n, pair_type, dtype=object), "rejected_raw": np.full(n, rejected_raw, dtype=bool)})
