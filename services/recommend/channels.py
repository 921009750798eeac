"""Recall channels that need no trained model, and the multi-channel merge.

`PopularChannel` answers for everyone (cold start, fallback); `CategoryChannel` gives category
neighbours of what the user just interacted with (or of the request's category), which is also
how a new item with metadata gets recommended before it has an embedding.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from services.recommend.fallback import LastKnownPopular
from services.recommend.online_store import ServingStore, log_popularity
from services.recommend.types import Candidate, RecallChannel, RecommendationRequest, UserContext


class PopularChannel:
    """Most popular items; every successful read refreshes the in-process fallback list."""

    name = "popular"

    def __init__(self, store: ServingStore, fallback: LastKnownPopular | None = None) -> None:
        self.store = store
        self.fallback = fallback

    def recall(self, user: UserContext, request: RecommendationRequest, k: int) -> list[Candidate]:
        popular = self.store.popular(k)
        if self.fallback is not None:
            self.fallback.remember(popular)
        return [Candidate(item, log_popularity(count), {self.name}) for item, count in popular]


class TrendingChannel:
    """Items with the most positive events in the feature store's recent window (`global.trending`)."""

    name = "trending"

    def __init__(self, store: ServingStore) -> None:
        self.store = store

    def recall(self, user: UserContext, request: RecommendationRequest, k: int) -> list[Candidate]:
        return [Candidate(item, log_popularity(score), {self.name}) for item, score in self.store.trending(k)]


class CategoryChannel:
    """Items sharing a category with the user's recent items (or the requested category)."""

    name = "category"

    def __init__(self, store: ServingStore, seed_items: int = 10, max_categories: int = 3) -> None:
        self.store = store
        self.seed_items = seed_items
        self.max_categories = max_categories

    def recall(self, user: UserContext, request: RecommendationRequest, k: int) -> list[Candidate]:
        categories = self._seed_categories(user, request)
        if not categories:
            return []
        per_category = max(k // len(categories), 1)
        found: dict[str, str] = {}
        for category in categories:
            for item in self.store.items_in_category(category, per_category):
                found.setdefault(item, category)
        items = list(found)
        scores = self.store.popularity_of(items)
        return [
            Candidate(item, log_popularity(score), {self.name}, because=found[item])
            for item, score in zip(items, scores)
        ]

    def _seed_categories(self, user: UserContext, request: RecommendationRequest) -> list[str]:
        if request.category:
            return [request.category]
        recent = user.history[: self.seed_items]
        counts: Counter[str] = Counter()
        for categories in self.store.categories_of(recent).values():
            counts.update(categories)
        return [category for category, _ in counts.most_common(self.max_categories)]


def merge_candidates(channel_results: Iterable[Sequence[Candidate]], limit: int) -> list[Candidate]:
    """Union of the channels' candidates: de-duplicated, sources merged, best score kept.

    Channels are interleaved round-robin so each gets a fair share of `limit` (per-channel quota).
    """
    merged: dict[str, Candidate] = {}
    queues = [list(results) for results in channel_results]
    position = 0
    while len(merged) < limit and any(position < len(queue) for queue in queues):
        for queue in queues:
            if position >= len(queue):
                continue
            candidate = queue[position]
            existing = merged.get(candidate.item_id)
            if existing is None:
                if len(merged) < limit:
                    merged[candidate.item_id] = Candidate(
                        candidate.item_id, candidate.recall_score, set(candidate.sources), candidate.because
                    )
            else:
                existing.sources |= candidate.sources
                existing.recall_score = max(existing.recall_score, candidate.recall_score)
                existing.because = existing.because or candidate.because
        position += 1
    return list(merged.values())


def default_channels(store: ServingStore, fallback: LastKnownPopular) -> list[RecallChannel]:
    return [CategoryChannel(store), TrendingChannel(store), PopularChannel(store, fallback)]
