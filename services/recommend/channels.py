"""The serving-only recall channels, as implementations of `models.retrieval`'s `RecallChannel`.

Popular and trending read the feature store's lists (`models.retrieval.multichannel.PopularChannel`
over a store source); `CategoryChannel` gives category neighbours of what the user just interacted
with (or of the request's category), which is also how a new item with metadata gets recommended
before it has an embedding. Merging (de-duplication, quotas, channel tags) is
`models.retrieval.multichannel.MultiChannelRecall`, for these and the registry's embedding channels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from models.retrieval.multichannel import PopularChannel, RecallChannel, Recalled
from services.recommend.fallback import LastKnownPopular
from services.recommend.online_store import ServingStore, log_popularity


class CategoryChannel:
    """Items sharing a category with the user's recent items, or with `category` when given
    (a request filtered to one category)."""

    name = "category"

    def __init__(
        self, store: ServingStore, category: str | None = None, seed_items: int = 10, max_categories: int = 3
    ) -> None:
        self.store = store
        self.category = category
        self.seed_items = seed_items
        self.max_categories = max_categories

    def recall(self, history: Sequence[str], k: int) -> list[Recalled]:
        categories = self._seed_categories(history)
        if not categories:
            return []
        per_category = max(k // len(categories), 1)
        found: dict[str, tuple[float, str]] = {}
        for category in categories:
            for item, score in self._ranked(category, per_category):
                found.setdefault(item, (score, category))
        ranked = sorted(found.items(), key=lambda entry: -entry[1][0])
        return [(item, score, category) for item, (score, category) in ranked]

    def _ranked(self, category: str, limit: int) -> list[tuple[str, float]]:
        """The category's newest items with their log popularity; the same for every user, so
        memoised with the store's other global lists (no Redis round trip per request)."""

        def read() -> list[tuple[str, float]]:
            items = self.store.items_in_category(category, limit)
            return [(item, log_popularity(score)) for item, score in zip(items, self.store.popularity_of(items))]

        return self.store.global_cache.get(("category_ranked", category, limit), read)

    def _seed_categories(self, history: Sequence[str]) -> list[str]:
        if self.category:
            return [self.category]
        recent = list(history)[-self.seed_items :]
        counts: Counter[str] = Counter()
        for categories in self.store.categories_of(recent).values():
            counts.update(categories)
        return [category for category, _ in counts.most_common(self.max_categories)]


def popular_source(store: ServingStore, fallback: LastKnownPopular) -> Callable[[int], list[tuple[str, float]]]:
    """The feature store's all-time popular list; every successful read refreshes the in-process
    fallback list."""

    def read(k: int) -> list[tuple[str, float]]:
        popular = store.popular(_bucket(k))
        fallback.remember(popular)
        return [(item, log_popularity(count)) for item, count in popular[:k]]

    return read


def trending_source(store: ServingStore) -> Callable[[int], list[tuple[str, float]]]:
    """Items with the most positive events in the recent window (`global.trending`)."""
    return lambda k: [(item, log_popularity(score)) for item, score in store.trending(_bucket(k))[:k]]


def _bucket(k: int) -> int:
    # Channels ask for k + len(history) items; reading a rounded-up size keeps the store's
    # per-size memo (one Redis read per size per TTL) to a handful of sizes.
    return -(-k // 128) * 128


def default_channels(store: ServingStore, fallback: LastKnownPopular) -> list[RecallChannel]:
    """Channels that need no trained model, in merge order (earlier channels fill their quota first)."""
    return [
        CategoryChannel(store),
        PopularChannel(trending_source(store), "trending"),
        PopularChannel(popular_source(store, fallback), "popular"),
    ]
