"""A per-worker cache of the bandits' per-item statistics, so that a request rarely waits on Redis.

Bandits tolerate delayed feedback (Chapelle & Li, NIPS 2011, measure Thompson sampling and UCB
with feedback applied in delayed batches), and the statistics are already as old as the stream
job's lag. An entry's age counts from before the read that fetched it:

- younger than `ttl_s`: served;
- between `ttl_s` and 2·`ttl_s`: served, and queued for a refresh in the background (one refresh
  in flight per cache, for every queued item at once), so the request does not wait;
- older (or missing): read from Redis in the request, with the other such candidates, in one call.

Staleness bound: a value served at time t reflects the store as it was at some time in
[t − 2·ttl_s, t]; a refresh that fails (Redis down) leaves the entries to age past the bound, and
the request's own read then fails, which serves greedy. Memory is bounded by `max_items` entries,
the least recently fetched dropped first. `ttl_s` = 0 turns it off (every read goes to Redis).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

V = TypeVar("V")
log = logging.getLogger(__name__)


class StatsCache(Generic[V]):
    """Per item id, `read`'s value, as fresh as the module docstring says (thread-safe: a worker's
    request threads share it). `submit` runs a background refresh (a one-thread pool by default)."""

    def __init__(self, read: Callable[[list[str]], Sequence[V]], ttl_s: float, max_items: int,
                 clock: Callable[[], float] = time.monotonic,
                 submit: Callable[[Callable[[], None]], object] | None = None) -> None:
        if ttl_s < 0 or max_items < 1:
            raise ValueError(f"ttl_s must be >= 0 and max_items >= 1, got {ttl_s}, {max_items}")
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._read = read
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._submit = submit or self._in_pool
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._queued: set[str] = set()
        self._refreshing = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, item_ids: Sequence[str]) -> list[V]:
        """The values of `item_ids`, in order."""
        now = self._clock()
        found: list[V | None] = [None] * len(item_ids)
        missing: list[int] = []
        with self._lock:
            for n, item_id in enumerate(item_ids):
                entry = self._entries.get(item_id)
                if entry is None or now - entry[0] >= 2 * self.ttl_s:
                    missing.append(n)
                    continue
                found[n] = entry[1]
                if now - entry[0] >= self.ttl_s:
                    self._queued.add(item_id)
            start = bool(self._queued) and not self._refreshing
            self._refreshing = self._refreshing or start
        if start:
            self._submit(self._refresh)
        if missing:
            fetched = self._fetch([item_ids[n] for n in missing], now)
            for n, value in zip(missing, fetched, strict=True):
                found[n] = value
        return found  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fetch(self, item_ids: list[str], now: float) -> Sequence[V]:
        values = self._read(item_ids)
        with self._lock:
            for item_id, value in zip(item_ids, values, strict=True):
                self._entries[item_id] = (now, value)
                self._entries.move_to_end(item_id)
                self._queued.discard(item_id)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)
        return values

    def _refresh(self) -> None:
        with self._lock:
            item_ids, self._queued = list(self._queued), set()
        try:
            self._fetch(item_ids, self._clock())
        except Exception as exc:  # noqa: BLE001 - a background refresh must not die; the bound still holds
            log.warning("explore: refreshing %d cached statistics failed: %s", len(item_ids), exc)
        finally:
            with self._lock:
                self._refreshing = False

    def _in_pool(self, job: Callable[[], None]) -> object:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explore-stats")
        return self._pool.submit(job)
