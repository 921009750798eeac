"""The k largest of a score vector without sorting all of it."""

from __future__ import annotations

import numpy as np


def stable_top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest `values`, best first, ties in index order: the same as
    `np.argsort(-values, kind="stable")[:k]`, but only the values at or above the k-th largest are
    sorted (a top 100 of a 12k-item catalog sorts ~100 values instead of 12k)."""
    if k >= len(values):
        return np.argsort(-values, kind="stable")[:k]
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kept = np.flatnonzero(values >= np.partition(values, len(values) - k)[len(values) - k])
    return kept[np.argsort(-values[kept], kind="stable")][:k]
