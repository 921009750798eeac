"""The per-worker cache of the bandits' statistics (the request path's `ItemCache`), against a
real Redis and a controlled clock: a value younger than `stats_cache_s` is served; until twice
that it is served while a background refresh fetches the store's current value; older, the
request reads it; a candidate not cached is read at once; an entry's age counts from before the
read that fetched it; the entries stay within `stats_cache_items`."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import redis

from feature_store.attribution import BUCKET_MS, Impression, Outcome
from feature_store.definitions import Entity
from feature_store.linucb_store import RedisLinUcbStore
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import Settings
from services.explore.policy import LinearStats
from services.explore.stats import LINEAR_READ_CHUNK, BanditStats
from services.recommend.item_cache import ItemCache
from tests.feature_store.helpers import WM, item_row

TTL_S, D = 2.0, 4


class Clock:
    """Time moves only when the test moves it (the caches here never sleep: no gathering pause)."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float, /) -> None:
        raise AssertionError(f"unexpected sleep({seconds})")


class Deferred:
    """Background refreshes, run when the test says."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def __call__(self, job: Callable[[], None]) -> None:
        self.jobs.append(job)

    def run(self) -> int:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()
        return len(jobs)


def _show(features: RedisOnlineStore, item: str, n: int, clicked: bool) -> None:
    now = int(time.time() * 1000)
    store = features.attribution()
    shown = Impression(f"imp-{item}-{n}", "u", item, now - 1000, f"r{item}{n}", 0, "greedy", None, None)
    store.record_impression(shown, now)
    if clicked:
        store.record_credit(shown, Outcome(f"c-{item}-{n}", "u", item, "click", now - 500, None), now)
    store.close()


def _store_now(features: RedisOnlineStore, items: list[str]) -> list[tuple[float, float]]:
    store = features.attribution()
    now = int(time.time() * 1000)
    counts = store.examined_counts(items, now - 7 * 24 * BUCKET_MS, now + BUCKET_MS)
    store.close()
    return list(zip(counts.examined.tolist(), counts.clicks.tolist()))


def _assert_statistics_of(stats: LinearStats, n: int, A: np.ndarray, b: np.ndarray) -> None:
    """Candidate n's packed statistics are those of (A⁻¹, b): checked through what the score reads,
    y·θ = yᵀA⁻¹b and c·q(y) = yᵀA⁻¹y, on probe vectors y, against solves."""
    upper, lower = np.triu_indices(D)
    for y in np.random.default_rng(9).normal(size=(3, D)):
        np.testing.assert_allclose(stats.theta[n] @ y, y @ np.linalg.solve(A, b), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats.quad[n] @ np.outer(y, y)[upper, lower], y @ np.linalg.solve(A, y), rtol=1e-9)


def _pairs(stats: BanditStats, items: list[str]) -> list[tuple[float, float]]:
    counts = stats.counts(items)
    return list(zip(counts.examined.tolist(), counts.clicks.tolist()))


def test_counts_are_served_within_the_staleness_bound(settings: Settings, redis_client: redis.Redis) -> None:
    features = RedisOnlineStore.from_settings(settings)
    clock, refresh = Clock(), Deferred()
    stats = BanditStats(features, features.attribution(), RedisLinUcbStore(features.spec, D), cache_s=TTL_S,
                        clock=clock, submit=refresh)
    for n in range(3):
        _show(features, "a", n, clicked=n == 0)
    first = _pairs(stats, ["a", "b"])
    assert first == [(3.0, 1.0), (0.0, 0.0)]
    _show(features, "a", 3, clicked=True)
    _show(features, "b", 0, clicked=True)
    _show(features, "c", 0, clicked=False)

    clock.now += TTL_S - 0.01  # fresh: cached, no refresh; a new candidate is read now
    assert _pairs(stats, ["a", "b", "c"]) == [*first, (1.0, 0.0)]
    assert refresh.jobs == []

    clock.now += 0.01  # past ttl: still served, and refreshed in the background
    assert _pairs(stats, ["a", "b"]) == first
    assert refresh.run() == 1
    assert _pairs(stats, ["a", "b"]) == _store_now(features, ["a", "b"]) == [(4.0, 2.0), (1.0, 1.0)]

    _show(features, "a", 4, clicked=False)
    clock.now += 2 * TTL_S  # a refresh that never ran: at twice the ttl the request reads itself
    assert _pairs(stats, ["a"]) == [(5.0, 2.0)]
    stats.close()
    features.close()


def test_without_a_cache_every_read_is_current(settings: Settings, redis_client: redis.Redis) -> None:
    features = RedisOnlineStore.from_settings(settings)
    refresh = Deferred()
    stats = BanditStats(features, features.attribution(), RedisLinUcbStore(features.spec, D), cache_s=0.0,
                        clock=Clock(), submit=refresh)
    _show(features, "a", 0, clicked=False)
    assert stats.counts(["a"]).examined[0] == 1.0
    _show(features, "a", 1, clicked=False)
    assert stats.counts(["a"]).examined[0] == 2.0 and refresh.jobs == []
    stats.close()
    features.close()


def test_linucb_statistics_are_cached_with_the_same_bound(settings: Settings, redis_client: redis.Redis) -> None:
    features = RedisOnlineStore.from_settings(settings)
    clock = Clock()
    linucb = RedisLinUcbStore(features.spec, D)
    stats = BanditStats(features, features.attribution(), linucb, cache_s=TTL_S, clock=clock, submit=Deferred())
    x = np.arange(1.0, D + 1.0)
    assert linucb.update("u1", "a", x, 1.0)
    before = stats.linear(["a"], [])
    _assert_statistics_of(before, 0, np.eye(D) + np.outer(x, x), x)
    assert linucb.update("u2", "a", x, 1.0)
    clock.now += TTL_S
    stale = stats.linear(["a"], [])
    np.testing.assert_array_equal(stale.theta, before.theta)
    np.testing.assert_array_equal(stale.quad, before.quad)
    clock.now += TTL_S
    _assert_statistics_of(stats.linear(["a"], []), 0, np.eye(D) + 2 * np.outer(x, x), 2 * x)
    stats.close()
    features.close()


def test_the_context_embeddings_are_cached_with_the_same_bound(settings: Settings, redis_client: redis.Redis) -> None:
    """x_t is the normalised mean of the history's embeddings, read through the cache: a newly
    published embedding reaches x_t only after the cache's bound, and x_t stays per request."""
    features = RedisOnlineStore.from_settings(settings)
    clock, refresh = Clock(), Deferred()
    dim = 32  # the item `embedding` feature's
    stats = BanditStats(features, features.attribution(), RedisLinUcbStore(features.spec, dim), cache_s=TTL_S,
                        clock=clock, submit=refresh)

    def vector(**axes: float) -> np.ndarray:
        out = np.zeros(dim)
        for axis, value in axes.items():
            out[int(axis[1:])] = value
        return out

    def publish(vectors: dict[str, np.ndarray], watermark: datetime) -> None:
        with features.publish_batch_view(Entity.ITEM, watermark) as write:
            write([item_row(item, embedding=v) for item, v in vectors.items()])

    def context(history: list[str]) -> np.ndarray:
        return stats.linear(["a"], history).context

    half = np.sqrt(0.5)
    publish({"h0": vector(x0=1.0), "h1": vector(x1=1.0)}, WM)
    np.testing.assert_allclose(context(["h0", "h1"]), vector(x0=half, x1=half))
    publish({"h0": vector(x2=3.0), "h1": vector(x3=4.0)}, WM + timedelta(hours=1))
    clock.now += TTL_S - 0.01
    np.testing.assert_allclose(context(["h0", "h1"]), vector(x0=half, x1=half))  # cached
    np.testing.assert_allclose(context(["h1"]), vector(x1=1.0))  # per request, from the same cache
    clock.now += 0.01
    np.testing.assert_allclose(context(["h1", "h0"]), vector(x0=half, x1=half))  # expired: served, refreshed
    assert refresh.run() == 2  # the item's statistics, and the embeddings
    np.testing.assert_allclose(context(["h0", "h1"]), vector(x2=0.6, x3=0.8))
    stats.close()
    features.close()


def test_the_cache_keeps_at_most_max_items_and_rereads_what_it_dropped() -> None:
    reads: list[list[str]] = []

    def read(ids: list[str]) -> dict[str, int]:
        reads.append(ids)
        return {i: int(i) for i in ids}

    def get(ids: list[str]) -> list[int]:
        return list(cache.get_many(ids, read).values())

    cache: ItemCache[int] = ItemCache(ttl_s=60.0, max_items=3, max_stale_s=60.0, gather_s=0.0, clock=Clock(),
                                      submit=Deferred())
    assert get(["1", "2", "3", "4", "5"]) == [1, 2, 3, 4, 5]
    assert len(cache) == 3
    assert get(["3", "4", "5"]) == [3, 4, 5] and len(reads) == 1  # the newest three: cached
    assert get(["1", "5"]) == [1, 5] and reads[-1] == ["1"]  # the oldest were dropped; the caller's order
    assert len(cache) == 3


def test_a_failed_background_refresh_keeps_the_entries_and_allows_the_next() -> None:
    calls, fail = [0], [False]

    def read(ids: list[str]) -> dict[str, int]:
        calls[0] += 1
        if fail[0]:
            raise ConnectionError("down")
        return dict.fromkeys(ids, calls[0])

    def get(ids: list[str]) -> list[int]:
        return list(cache.get_many(ids, read).values())

    clock, refresh = Clock(), Deferred()
    cache: ItemCache[int] = ItemCache(ttl_s=1.0, max_items=10, max_stale_s=1.0, gather_s=0.0, clock=clock,
                                      submit=refresh)
    assert get(["a", "b"]) == [1, 1]
    clock.now += 1.0
    fail[0] = True
    assert get(["a"]) == [1] and refresh.run() == 1  # the failure is logged, not raised
    fail[0] = False
    assert get(["a", "b"]) == [1, 1] and refresh.run() == 1  # a new refresh is allowed
    assert get(["a", "b"]) == [3, 3]


def test_an_entry_ages_from_before_the_read_that_fetched_it() -> None:
    clock, refresh = Clock(), Deferred()
    version = [0]

    def slow_read(ids: list[str]) -> dict[str, int]:
        read_at = version[0]
        clock.now += 0.5  # the read takes half the ttl; the store may change meanwhile
        return dict.fromkeys(ids, read_at)

    def get(ids: list[str]) -> list[int]:
        return list(cache.get_many(ids, slow_read).values())

    cache: ItemCache[int] = ItemCache(ttl_s=1.0, max_items=10, max_stale_s=1.0, gather_s=0.0, clock=clock,
                                      submit=refresh)
    assert get(["a"]) == [0]  # read at 100.0, returned at 100.5
    version[0] = 1
    clock.now = 101.0  # one ttl after the read began: expired, served while refreshed
    assert get(["a"]) == [0] and refresh.run() == 1  # the refresh reads from 101.0 to 101.5
    version[0] = 2
    clock.now = 102.99  # within 2 ttl of the refresh's start: served
    assert get(["a"]) == [1] and refresh.run() == 1
    version[0] = 3
    clock.now = 105.5  # the last read began at 102.99: 2.51 ttl ago, read in the request
    assert get(["a"]) == [3]


def test_linucb_statistics_of_many_candidates_are_read_in_chunks_each_in_its_place(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """More candidates than one read chunk (LINEAR_READ_CHUNK): each gets its own statistics, in
    the caller's order, cold and from a background refresh: those of A = I + x xᵀ and b = r x of
    its one planted update (items without one: I and 0)."""
    features = RedisOnlineStore.from_settings(settings)
    clock, refresh = Clock(), Deferred()
    linucb = RedisLinUcbStore(features.spec, D)
    stats = BanditStats(features, features.attribution(), linucb, cache_s=TTL_S, clock=clock, submit=refresh)
    items = [f"m{n}" for n in range(2 * LINEAR_READ_CHUNK + 7)][::-1]
    rng = np.random.default_rng(2)
    planted = {item: (rng.normal(size=D), float(n % 2)) for n, item in enumerate(items) if n % 3}
    for item, (x, reward) in planted.items():
        assert linucb.update(f"u-{item}", item, x, reward)

    def check(read: LinearStats) -> None:
        for n, item in enumerate(items):
            x, reward = planted.get(item, (np.zeros(D), 0.0))
            _assert_statistics_of(read, n, np.eye(D) + np.outer(x, x), reward * x)

    check(stats.linear(items, []))
    clock.now += TTL_S  # expired: served, and refreshed in the background
    stats.linear(items, [])
    assert refresh.run() == 1
    clock.now += 0.5
    check(stats.linear(items, []))
    stats.close()
    features.close()
