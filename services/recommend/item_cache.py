"""Small in-process TTL caches for the request path: catalog entries and global lists.

Item metadata changes rarely but is read for every candidate of every request; caching it for a
few seconds removes most catalog round trips. Availability is never cached (it is checked in
Redis on every request), so an item made unavailable disappears at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")


class ItemCache:
    """LRU with a time-to-live; `ttl_s=0` disables it. Bounded by `max_items`."""

    def __init__(self, ttl_s: float = 5.0, max_items: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, item_ids: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """(cached entries, ids to fetch)."""
        if self.ttl_s <= 0:
            return {}, list(item_ids)
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        with self._lock:
            for item_id in item_ids:
                entry = self._entries.get(item_id)
                if entry is not None and entry[0] > now:
                    found[item_id] = entry[1]
                else:
                    missing.append(item_id)
        return found, missing

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        if self.ttl_s <= 0 or not entries:
            return
        expires = time.monotonic() + self.ttl_s
        with self._lock:
            for item_id, data in entries.items():
                self._entries[item_id] = (expires, data)
                self._entries.move_to_end(item_id)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)

    def invalidate(self, item_id: str) -> None:
        with self._lock:
            self._entries.pop(item_id, None)


class TtlMemo:
    """Memoises a few global reads (popular, trending, category members) for `ttl_s` seconds:
    they are the same for every request, so one read serves them all. `ttl_s=0` disables it."""

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        if self.ttl_s <= 0:
            return read()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]  # type: ignore[no-any-return]
        value = read()  # errors propagate and are not cached
        if not value:
            return value  # nothing yet (cold start): re-read next time rather than pin an empty list
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (now + self.ttl_s, value)
        return value
