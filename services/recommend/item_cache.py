"""Small in-process TTL caches for the request path: per-item values and global lists.

Per-item values (catalog entries, ranker item features, the explore stage's bandit statistics)
change slowly but are read for every candidate of every request; caching them for a few seconds
removes most round trips. Availability is never cached (it is checked in Redis on every request),
so an item made unavailable disappears at once.

Both caches serve an expired entry stale while one background thread re-reads it, up to a bounded
staleness: entries cached together expire together, and the request that found hundreds of them
expired used to pay for re-reading all of them (the largest source of tail latency in
`benchmarks/serving.py`). Past the bound, reads are synchronous again, so a failing source (Redis
down) surfaces in requests instead of hiding behind old data.

Staleness bound of `ItemCache`: an entry's age counts from *before* the read that fetched it, so
a value served at time t reflects the source as it was at some time in [t − ttl_s − max_stale_s, t].
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

T = TypeVar("T")
V = TypeVar("V")
Submit = Callable[[Callable[[], None]], object]
#: Called once per `ItemCache.get_many` with how many of its ids were fresh, served stale (expired,
#: refreshed in the background) and read now (never cached, too stale, or the cache is off).
LookupCounter = Callable[[int, int, int], None]
log = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the caches read the time and wait; the `time` module is the real one, tests pass one
    they move by hand."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float, /) -> None: ...


class BackgroundRefresher:
    """Refreshes expired keys on one worker thread with `refresh(keys)`, each key at most once
    queued or in flight. Keys submitted within `gather_s` of the first are refreshed in one call:
    at a few hundred requests a second, most requests find a few items just expired, and one read
    per request cost a round trip and a thread wake-up each, contending with the requests.
    `submit(job)` runs a refresh job; by default the refresher's own one-thread pool (tests pass
    one that runs jobs when they say)."""

    def __init__(
        self, name: str, refresh: Callable[[list[Any]], None], gather_s: float = 0.0, clock: Clock = time,
        submit: Submit | None = None,
    ) -> None:
        self.name = name
        self.gather_s = gather_s
        self.clock = clock
        self._refresh = refresh
        self._submit = submit or self._in_pool
        self._queued: set[Hashable] = set()
        self._in_flight: set[Hashable] = set()
        self._scheduled = False
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            new = [key for key in keys if key not in self._queued and key not in self._in_flight]
            if not new:
                return
            self._queued.update(new)
            if self._scheduled:
                return
            self._scheduled = True
        self._submit(self._run)

    def close(self) -> None:
        """Waits for a refresh in flight and stops the thread (a later submit starts a new one)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def _in_pool(self, job: Callable[[], None]) -> object:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
            executor = self._executor
        return executor.submit(job)

    def _run(self) -> None:
        if self.gather_s > 0:
            self.clock.sleep(self.gather_s)
        with self._lock:
            keys = list(self._queued)
            self._queued.clear()
            self._in_flight.update(keys)
            self._scheduled = False
        try:
            self._refresh(keys)
        except Exception:  # the source is down: requests see it once the entries are too stale
            log.debug("%s: background refresh of %d keys failed", self.name, len(keys), exc_info=True)
        finally:
            with self._lock:
                self._in_flight.difference_update(keys)


class ItemCache(Generic[V]):
    """Per-item LRU of values `V` with a time-to-live (`ttl_s=0` disables it), bounded by
    `max_items` (the least recently fetched dropped first); expired entries are served for up to
    `max_stale_s` more while refreshed in the background (`submit`, as `BackgroundRefresher`),
    those that expire within `gather_s` of each other in one read. Thread-safe: a worker's request
    threads share one cache. `on_lookup` counts each lookup's outcomes (the API's metrics: a cache
    that never hits shows there)."""

    def __init__(
        self,
        ttl_s: float = 5.0,
        max_items: int = 100_000,
        max_stale_s: float | None = None,
        gather_s: float = 0.05,
        clock: Clock = time,
        submit: Submit | None = None,
        name: str = "item-cache-refresh",
        on_lookup: LookupCounter | None = None,
    ) -> None:
        if ttl_s < 0 or max_items < 1:
            raise ValueError(f"ttl_s must be >= 0 and max_items >= 1, got {ttl_s}, {max_items}")
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_items = max_items
        self.max_stale_s = 10 * ttl_s if max_stale_s is None else max_stale_s
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetch: Callable[[list[str]], Mapping[str, V]] | None = None
        self._refresher = BackgroundRefresher(name, self._refresh, gather_s, clock, submit)
        self._on_lookup = on_lookup

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, item_ids: Sequence[str], fetch: Callable[[list[str]], Mapping[str, V]]) -> dict[str, V]:
        """Entries of `item_ids` that exist, in the caller's order; `fetch(ids)` reads ids never
        cached (or too stale) now, and expired ones in the background. Errors of a synchronous
        fetch propagate. Every call on one cache must pass the same reader (the background refresh
        uses the latest)."""
        if self.ttl_s <= 0:
            if self._on_lookup is not None:
                self._on_lookup(0, 0, len(item_ids))
            fetched = fetch(list(item_ids))
            return {item_id: fetched[item_id] for item_id in item_ids if item_id in fetched}
        now = self.clock.monotonic()
        found: dict[str, V] = {}
        missing: list[str] = []
        expired: list[str] = []
        entries, max_stale_s = self._entries, self.max_stale_s  # locals: this loop runs per candidate
        with self._lock:
            for item_id in item_ids:
                entry = entries.get(item_id)
                if entry is None or now >= entry[0] + max_stale_s:
                    missing.append(item_id)
                    continue
                found[item_id] = entry[1]
                if now >= entry[0]:
                    expired.append(item_id)
        if self._on_lookup is not None:
            self._on_lookup(len(found) - len(expired), len(expired), len(missing))
        if expired:
            self._fetch = fetch
            self._refresher.submit(expired)
        if missing:
            fetched = fetch(missing)
            self.put_many(fetched, now)
            found.update(fetched)
            found = {item_id: found[item_id] for item_id in item_ids if item_id in found}
        return found

    def put_many(self, entries: Mapping[str, V], read_at: float | None = None) -> None:
        """Caches `entries`, read from the source at `read_at` (`clock.monotonic()`; default now):
        their age counts from then, not from when the read returned."""
        if self.ttl_s <= 0 or not entries:
            return
        expires = (self.clock.monotonic() if read_at is None else read_at) + self.ttl_s
        with self._lock:
            for item_id, data in entries.items():
                self._entries[item_id] = (expires, data)
                self._entries.move_to_end(item_id)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)

    def _refresh(self, item_ids: list[str]) -> None:
        assert self._fetch is not None  # set before the first submit
        started = self.clock.monotonic()
        self.put_many(self._fetch(item_ids), started)

    def invalidate(self, item_id: str) -> None:
        with self._lock:
            self._entries.pop(item_id, None)

    def close(self) -> None:
        """Stops the background refresh thread (waiting for a refresh in flight)."""
        self._refresher.close()


class TtlMemo:
    """Memoises a few global reads (popular, trending, category members) for `ttl_s` seconds:
    they are the same for every request, so one read serves them all. `ttl_s=0` disables it.
    Expired entries are served for up to `max_stale_s` more while refreshed in the background."""

    def __init__(
        self, ttl_s: float = 1.0, max_entries: int = 10_000, max_stale_s: float | None = None, clock: Clock = time
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self.max_stale_s = 10 * ttl_s if max_stale_s is None else max_stale_s
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._readers: dict[Hashable, Callable[[], Any]] = {}
        self._refresher = BackgroundRefresher("global-cache-refresh", self._refresh, clock=clock)

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        if self.ttl_s <= 0:
            return read()
        now = self.clock.monotonic()
        entry = self._entries.get(key)
        if entry is not None:
            expires, value = entry
            if now < expires:
                return value  # type: ignore[no-any-return]
            if now < expires + self.max_stale_s:
                self._readers[key] = read
                self._refresher.submit([key])
                return value  # type: ignore[no-any-return]
        return self._read(key, read)

    def _refresh(self, keys: list[Hashable]) -> None:
        for key in keys:
            try:
                self._read(key, self._readers[key])
            except Exception:  # as BackgroundRefresher: surfaces once the entry is too stale
                log.debug("global cache: background refresh of %r failed", key, exc_info=True)

    def _read(self, key: Hashable, read: Callable[[], T]) -> T:
        value = read()  # errors propagate and are not cached
        if not value:
            return value  # nothing yet (cold start): re-read next time rather than pin an empty list
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
            self._readers.clear()
        self._entries[key] = (self.clock.monotonic() + self.ttl_s, value)
        return value
