"""Where a model metric's actor runs its model: one rule for every model family."""

from __future__ import annotations


def pick_device(num_gpus: float) -> str:
    """``cuda`` when the actor was given a GPU share and one is visible, else ``cpu`` (a GPU
    reservation on a machine without CUDA falls back instead of failing every batch)."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
