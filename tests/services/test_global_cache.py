"""The request path's caches (global lists, items): stale-while-revalidate, bounded staleness.

The caches run on a clock the tests move by hand, so no TTL races a busy machine; only the
background refresh thread is waited for (with a generous deadline)."""

from __future__ import annotations

import threading
import time

import pytest

from services.recommend.item_cache import ItemCache, TtlMemo


class Source:
    """A list that changes on every read, and can be made to fail."""

    def __init__(self) -> None:
        self.reads = 0
        self.failing = False

    def __call__(self) -> list[int]:
        if self.failing:
            raise ConnectionError("source down")
        self.reads += 1
        return [self.reads]


class ManualClock:
    """Time moves only by `advance`; `sleep` returns once it has moved far enough."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleepers = 0
        self._moved = threading.Condition()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._moved:
            until = self.now + seconds
            self.sleepers += 1
            self._moved.notify_all()
            self._moved.wait_for(lambda: self.now >= until)
            self.sleepers -= 1

    def wait_for_sleeper(self) -> None:
        with self._moved:
            assert self._moved.wait_for(lambda: self.sleepers > 0, timeout=60), "nothing went to sleep"

    def advance(self, seconds: float) -> None:
        with self._moved:
            self.now += seconds
            self._moved.notify_all()


def wait_for(condition, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_an_expired_entry_is_served_stale_and_refreshed_in_the_background() -> None:
    clock = ManualClock()
    memo, source = TtlMemo(ttl_s=0.05, max_stale_s=10.0, clock=clock), Source()
    assert memo.get("popular", source) == [1]
    clock.advance(0.049)
    assert memo.get("popular", source) == [1] and source.reads == 1  # fresh: no read
    clock.advance(0.002)
    assert memo.get("popular", source) == [1]  # expired: the old list, at once
    wait_for(lambda: source.reads == 2)
    wait_for(lambda: memo.get("popular", source) == [2])


def test_a_failing_source_surfaces_once_the_entry_is_too_stale() -> None:
    clock = ManualClock()
    memo, source = TtlMemo(ttl_s=0.05, max_stale_s=0.2, clock=clock), Source()
    assert memo.get("popular", source) == [1]
    source.failing = True
    clock.advance(0.06)
    assert memo.get("popular", source) == [1]  # the background refresh fails quietly
    clock.advance(0.2)
    with pytest.raises(ConnectionError):
        memo.get("popular", source)


def test_ttl_zero_reads_every_time() -> None:
    memo, source = TtlMemo(ttl_s=0.0), Source()
    assert [memo.get("k", source) for _ in range(3)] == [[1], [2], [3]]


def test_item_cache_serves_expired_items_while_refreshing_them_and_fetches_missing_ones_now() -> None:
    versions = {"a": 1, "b": 1}
    fetched: list[list[str]] = []

    def fetch(ids: list[str]) -> dict[str, dict[str, int]]:
        fetched.append(sorted(ids))
        return {i: {"v": versions[i]} for i in ids if i in versions}

    clock = ManualClock()
    cache = ItemCache(ttl_s=0.05, max_stale_s=10.0, clock=clock)
    assert cache.get_many(["a"], fetch) == {"a": {"v": 1}}
    versions["a"] = 2
    clock.advance(0.06)
    # "a" expired: served as it was, refreshed in the background; "b" never cached: read now.
    assert cache.get_many(["a", "b"], fetch) == {"a": {"v": 1}, "b": {"v": 1}}
    clock.wait_for_sleeper()  # the refresh, pausing to gather more expired items
    clock.advance(0.05)
    wait_for(lambda: cache.get_many(["a"], fetch) == {"a": {"v": 2}})
    assert ["b"] in fetched and ["a"] in fetched


def test_items_expiring_together_are_refreshed_in_one_read() -> None:
    fetched: list[list[str]] = []

    def fetch(ids: list[str]) -> dict[str, dict[str, int]]:
        fetched.append(sorted(ids))
        return {i: {"v": len(fetched)} for i in ids}

    clock = ManualClock()
    cache = ItemCache(ttl_s=0.05, max_stale_s=10.0, gather_s=0.2, clock=clock)
    cache.get_many(["a", "b", "c"], fetch)
    clock.advance(0.06)
    for item in ("a", "b", "c"):  # three requests within the gathering pause, each finding one item expired
        assert cache.get_many([item], fetch) == {item: {"v": 1}}
    clock.wait_for_sleeper()
    assert len(fetched) == 1  # nothing read before the pause ends
    clock.advance(0.2)
    wait_for(lambda: len(fetched) == 2)
    assert fetched[1] == ["a", "b", "c"]
    wait_for(lambda: cache.get_many(["a", "b", "c"], fetch) == {i: {"v": 2} for i in "abc"})
