"""Vectorised building blocks of pair selection (no Python loop over prompts).

Candidates are identified by their position in the pool frame. A selection is a frame with
``chosen`` and ``rejected`` positions, ``score_chosen``, ``score_rejected``, ``pair_type`` and
``rejected_raw`` (the rejected reply is the raw output, for format pairs).
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


def random_key(ids: pd.Series, seed: int, salt: str = "") -> np.ndarray:
    """A deterministic pseudo-random uint64 per id (same seed, same ids -> same order on any
    machine): pandas' vectorised SipHash with a key derived from the seed."""
    key = hashlib.sha256(f"persodpo-pairs:{seed}:{salt}".encode()).hexdigest()[:16]
    return pd.util.hash_array(ids.to_numpy(dtype=object), hash_key=key, categorize=False)


def cross_within_prompt(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """Every (left, right) row pair with the same ``prompt_id`` (a hash join: per-prompt cross
    product without a loop). Columns get suffixes ``_c`` (left) and ``_r`` (right)."""
    return left.merge(right, on="prompt_id", suffixes=("_c", "_r"))


def first_k_per_prompt(frame: pd.DataFrame, order: list[str], ascending: list[bool], k: int | None) -> pd.DataFrame:
    """The first ``k`` rows of each prompt after sorting by ``order`` (all rows if k is None)."""
    if k is None or frame.empty:
        return frame
    ordered = frame.sort_values(["prompt_id", *order], ascending=[True, *ascending], kind="mergesort")
    return ordered[ordered.groupby("prompt_id", sort=False).cumcount() < k]


def selection(chosen, rejected, score_chosen, score_rejected, pair_type: str, rejected_raw: bool) -> pd.DataFrame:
    n = len(chosen)
    return pd.DataFrame({
        "chosen": np.asarray(chosen, dtype="int64"), "rejected": np.asarray(rejected, dtype="int64"),
        "score_chosen": np.asarray(score_chosen, dtype="float64"),
        "score_rejected": np.asarray(score_rejected, dtype="float64"),
        "pair_type": np.full(n, pair_type, dtype=object), "rejected_raw": np.full(n, rejected_raw, dtype=bool)})
