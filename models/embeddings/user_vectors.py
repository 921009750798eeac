"""User vectors for user→item recall, computed at request time from the live sequence.

mean:  u = Σ_i e_i / n over the user's most recent n items;
decay: u = Σ_i 2^(-age_i / half_life) e_i / Σ_i 2^(-age_i / half_life), age_i = 0 for the
most recent item, so recent interest dominates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.embeddings.item_embeddings import ItemEmbeddings


def user_vector(
    embeddings: ItemEmbeddings, recent_items: Sequence[str], method: str = "decay",
    half_life: float = 5.0, max_items: int = 50, position: dict[str, int] | None = None,
    normalized: np.ndarray | None = None,
) -> np.ndarray | None:  # fmt: skip
    """The user's vector from `recent_items` (most recent LAST, as the feature store keeps the
    live sequence), or None when no item has an embedding. Per request, pass `position`
    (`embeddings.position()`) and `normalized` (`embeddings.normalized()`), computed once: both
    cost O(catalog) to build."""
    if method not in ("mean", "decay"):
        raise ValueError(f"unknown user-vector method {method!r}: use mean or decay")
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    position = position if position is not None else embeddings.position()
    recent = list(recent_items)[-max_items:]
    ages = np.arange(len(recent) - 1, -1, -1, dtype=np.float64)
    rows = [(position[item], age) for item, age in zip(recent, ages) if item in position]
    if not rows:
        return None
    unit = normalized if normalized is not None else embeddings.normalized()
    vectors = unit[[row for row, _ in rows]]
    weights = np.ones(len(rows)) if method == "mean" else 2.0 ** (-np.array([age for _, age in rows]) / half_life)
    return (weights[:, None] * vectors).sum(axis=0) / weights.sum()
