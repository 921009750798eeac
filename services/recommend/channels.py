"""The serving-only recall channels, as implementations of `models.retrieval`'s `RecallChannel`.

Popular and trending read the feature store's lists (`ListChannel` over a store source);
`CategoryChannel` gives category neighbours of what the user just interacted with (or of the
request's category), which is also how a new item with metadata gets recommended before it has an
embedding. Bound to a request (`for_request`), each reads its list past the items the request
cannot use (seen, excluded, unavailable) in growing pages (`ServingStore.read_usable`), so they
do not shorten its candidates. Merging (de-duplication, quotas, channel tags) is
`models.retrieval.multichannel.MultiChannelRecall`, for these and the registry's embedding channels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence

from models.retrieval.multichannel import RecallChannel, Recalled
from services.recommend.fallback import LastKnownPopular
from services.recommend.online_store import Ranked, ServingStore, log_popularity


class CategoryChannel:
    """Items sharing a category with the user's recent items, or with `category` when given
    (a request filtered to one category), newest first; never the history or `exclude`."""

    name = "category"

    def __init__(
        self, store: ServingStore, category: str | None = None, seed_items: int = 10, max_categories: int = 3,
        exclude: Collection[str] = frozenset(),
    ) -> None:
        self.store = store
        self.category = category
        self.seed_items = seed_items
        self.max_categories = max_categories
        self.exclude = exclude

    def for_request(self, category: str | None, exclude: Collection[str]) -> CategoryChannel:
        """This channel for one request: seeded by its `category` when given, skipping `exclude`."""
        seed = category or self.category
        return CategoryChannel(self.store, seed, self.seed_items, self.max_categories, exclude)

    def recall(self, history: Sequence[str], k: int) -> list[Recalled]:
        categories = self._seed_categories(history)
        if not categories:
            return []
        per_category = max(k // len(categories), 1)
        skip = {*self.exclude, *history}
        found: dict[str, tuple[float, str]] = {}
        for category in categories:
            for item, count in self.store.usable_in_category(category, per_category, skip):
                found.setdefault(item, (log_popularity(count), category))
        ranked = sorted(found.items(), key=lambda entry: -entry[1][0])
        return [(item, score, category) for item, (score, category) in ranked]

    def _seed_categories(self, history: Sequence[str]) -> list[str]:
        if self.category:
            return [self.category]
        recent = list(history)[-self.seed_items :]
        counts: Counter[str] = Counter()
        for categories in self.store.categories_of(recent).values():
            counts.update(categories)
        return [category for category, _ in counts.most_common(self.max_categories)]


class ListChannel:
    """A global ranked list, `source(n) -> its first n (item, score)`, as a channel: its best
    items that are not in the history or `exclude` and are available."""

    def __init__(
        self, name: str, store: ServingStore, source: Callable[[int], Ranked],
        exclude: Collection[str] = frozenset(),
    ) -> None:
        self.name = name
        self.store = store
        self.source = source
        self.exclude = exclude

    def for_request(self, category: str | None, exclude: Collection[str]) -> ListChannel:
        """This channel for one request, skipping `exclude` (a global list has no category seed)."""
        return ListChannel(self.name, self.store, self.source, exclude)

    def recall(self, history: Sequence[str], k: int) -> Ranked:
        return self.store.read_usable(self.source, k, {*self.exclude, *history}, memo=self.name)


def for_request(
    channels: Sequence[RecallChannel], category: str | None, exclude: Collection[str]
) -> tuple[RecallChannel, ...]:
    """`channels` with the serving ones bound to one request (`for_request` of each); others as they are."""
    serving = (CategoryChannel, ListChannel)
    return tuple(c.for_request(category, exclude) if isinstance(c, serving) else c for c in channels)


def popular_source(store: ServingStore, fallback: LastKnownPopular) -> Callable[[int], Ranked]:
    """The feature store's all-time popular list; every successful read refreshes the in-process
    fallback list."""

    def read(k: int) -> Ranked:
        popular = store.popular(_bucket(k))
        fallback.remember(popular)
        return [(item, log_popularity(count)) for item, count in popular[:k]]

    return read


def trending_source(store: ServingStore) -> Callable[[int], Ranked]:
    """Items with the most positive events in the recent window (`global.trending`)."""
    return lambda k: [(item, log_popularity(score)) for item, score in store.trending(_bucket(k))[:k]]


def _bucket(k: int) -> int:
    # Lists are read in pages of growing sizes; reading a rounded-up size keeps the store's
    # per-size memo (one Redis read per size per TTL) to a handful of sizes.
    return -(-k // 128) * 128


def default_channels(store: ServingStore, fallback: LastKnownPopular) -> list[RecallChannel]:
    """Channels that need no trained model, in merge order (earlier channels fill their quota first)."""
    return [
        CategoryChannel(store),
        ListChannel("trending", store, trending_source(store)),
        ListChannel("popular", store, popular_source(store, fallback)),
    ]
