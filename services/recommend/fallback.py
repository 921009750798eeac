"""The in-process answer of last resort: the last popular list read from Redis."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from services.recommend.types import Recommendation, RecommendationRequest


class LastKnownPopular:
    """Remembers the last non-empty popular list so a Redis outage still gets an answer."""

    def __init__(self) -> None:
        self._items: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def remember(self, popular: Sequence[tuple[str, float]]) -> None:
        if popular:
            with self._lock:
                self._items = list(popular)

    def __len__(self) -> int:
        return len(self._items)

    def answer(self, request: RecommendationRequest) -> list[Recommendation]:
        """The remembered list less `exclude`; nothing for a category request: which items are in
        the category is in Redis, and an item from another category would break the client's rule."""
        if request.category:
            return []
        with self._lock:
            items = self._items
        chosen = [(item, score) for item, score in items if item not in request.exclude][: request.k]
        return [Recommendation(item, float(score), ["popular"], "popular right now") for item, score in chosen]
