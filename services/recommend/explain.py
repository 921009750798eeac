"""Reasons a person can read, from the ranker's attention or the recall channel's evidence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.recommend.types import Candidate, ItemCatalog

SOURCE_REASONS = {
    "trending": "trending now",
    "popular": "popular right now",
    "embedding": "similar to items you interacted with",
    "item2vec": "often watched together with your recent items",
    "deepwalk": "often watched after your recent items",
    "node2vec": "often watched after your recent items",
    "user_vector": "close to your recent taste",
    "graph": "often watched after your recent items",
    "cooccurrence": "often watched together with your recent items",
}


def top_attended(attention: np.ndarray | None, history: Sequence[str]) -> list[str | None]:
    """Per candidate, the history item with the highest attention weight (DIN's activation unit)."""
    if attention is None or not len(history):
        return []
    width = min(attention.shape[1], len(history))
    if width == 0:
        return []
    best = np.argmax(attention[:, :width], axis=1)
    return [history[int(j)] for j in best]


def explain(
    ranked: Sequence[Candidate],
    attended: Sequence[str | None],
    catalog: ItemCatalog,
) -> list[str]:
    """One sentence per candidate: 'because you watched X', the category, or the channel's reason."""
    seeds = {item for item in attended if item} | {c.because for c in ranked if c.because and "category" not in c.sources}
    titles = catalog.titles(sorted(seeds)) if seeds else {}
    reasons = []
    for index, candidate in enumerate(ranked):
        seed = attended[index] if index < len(attended) else None
        if seed:
            reasons.append(f"because you watched {titles.get(seed, seed)}")
        elif "category" in candidate.sources and candidate.because:
            reasons.append(f"more in {candidate.because}")
        elif candidate.because:
            reasons.append(f"similar to {titles.get(candidate.because, candidate.because)}")
        else:
            reasons.append(_source_reason(candidate.sources))
    return reasons


def _source_reason(sources: set[str]) -> str:
    for source in ("trending", "item2vec", "deepwalk", "node2vec", "graph", "cooccurrence", "user_vector", "embedding", "popular"):
        if source in sources:
            return SOURCE_REASONS[source]
    return "recommended for you"
