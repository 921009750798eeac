"""Item-to-item neighbours: the recall model's embeddings when it knows the item, else its categories."""

from __future__ import annotations

from services.recommend.online_store import ServingStore
from services.recommend.pipeline import ModelBundle


def similar_items(
    store: ServingStore, bundle: ModelBundle, item_id: str, k: int
) -> tuple[list[tuple[str, float]], str] | None:
    """Up to `k` (item, score) neighbours and the source used; None if the item is unknown."""
    if bundle.similar is not None:
        neighbours = bundle.similar.similar(item_id, k + 1)
        if neighbours:
            return _available(store, [(i, s) for i, s in neighbours if i != item_id], k), "embedding"
    item = store.get_item(item_id)
    if item is None:
        return None
    found: dict[str, None] = {}  # insertion-ordered and O(1) membership: up to 64 categories × 4k items
    for category in item.categories:
        for other in store.items_in_category(category, 4 * k):
            if other != item_id:
                found.setdefault(other)
    scores = store.popularity_of(list(found))
    ranked = sorted(zip(found, scores), key=lambda pair: -pair[1])
    return _available(store, ranked, k), "category"


def _available(store: ServingStore, pairs: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    unavailable = store.unavailable([item for item, _ in pairs])
    return [(item, float(score)) for item, score in pairs if item not in unavailable][:k]
