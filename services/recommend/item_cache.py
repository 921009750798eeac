"""Small in-process TTL caches for the request path: catalog entries and global lists.

Item metadata changes rarely but is read for every candidate of every request; caching it for a
few seconds removes most catalog round trips. Availability is never cached (it is checked in
Redis on every request), so an item made unavailable disappears at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


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
    they are the same for every request, so one read serves them all. `ttl_s=0` disables it.

    An expired entry is served stale while one background thread re-reads it, so no request pays
    for a refresh (with twenty categories and a one-second TTL, one request in a few would);
    past `max_stale_s` the read is synchronous again, so a failing source (Redis down) surfaces
    in requests instead of being hidden behind old lists forever.
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000, max_stale_s: float | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_stale_s = 10 * ttl_s if max_stale_s is None else max_stale_s
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._refreshing: set[Hashable] = set()
        self._lock = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        if self.ttl_s <= 0:
            return read()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None:
            expires, value = entry
            if now < expires:
                return value  # type: ignore[no-any-return]
            if now < expires + self.max_stale_s:
                self._refresh_in_background(key, read)
                return value  # type: ignore[no-any-return]
        return self._read(key, read)

    def _read(self, key: Hashable, read: Callable[[], T]) -> T:
        value = read()  # errors propagate and are not cached
        if not value:
            return value  # nothing yet (cold start): re-read next time rather than pin an empty list
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        return value

    def _refresh_in_background(self, key: Hashable, read: Callable[[], Any]) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(1, thread_name_prefix="global-cache-refresh")
        self._refresher.submit(self._refresh, key, read)

    def _refresh(self, key: Hashable, read: Callable[[], Any]) -> None:
        try:
            self._read(key, read)
        except Exception:  # the source is down: requests see it once the entry is too stale
            log.debug("background refresh of %r failed", key, exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(key)
