"""Item-to-item neighbours: the recall model's embeddings when it knows the item, else its categories."""

from __future__ import annotations

from services.recommend.online_store import Ranked, ServingStore
from services.recommend.pipeline import ModelBundle


def similar_items(store: ServingStore, bundle: ModelBundle, item_id: str, k: int) -> tuple[Ranked, str] | None:
    """Up to `k` available (item, score) neighbours and the source used; None if the item is unknown.
    Retired neighbours are read past (`ServingStore.read_usable`), so they do not shorten the list."""
    similar = bundle.similar
    if similar is not None and similar.similar(item_id, 1):  # the model knows the item
        neighbours = store.read_usable(lambda n: similar.similar(item_id, n) or [], k, {item_id})
        return [(item, float(score)) for item, score in neighbours], "embedding"
    item = store.get_item(item_id)
    if item is None:
        return None
    found: dict[str, float] = {}  # insertion-ordered and O(1) membership: up to 64 categories × 4k items
    for category in item.categories:
        for other, count in store.usable_in_category(category, 4 * k, {item_id}):
            found.setdefault(other, count)
    return sorted(found.items(), key=lambda pair: -pair[1])[:k], "category"
