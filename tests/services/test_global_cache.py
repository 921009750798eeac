"""The request path's caches (global lists, items): stale-while-revalidate, bounded staleness."""

from __future__ import annotations

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


def wait_for(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_an_expired_entry_is_served_stale_and_refreshed_in_the_background() -> None:
    memo, source = TtlMemo(ttl_s=0.05, max_stale_s=10.0), Source()
    assert memo.get("popular", source) == [1]
    assert memo.get("popular", source) == [1] and source.reads == 1  # fresh: no read
    time.sleep(0.06)
    assert memo.get("popular", source) == [1]  # expired: the old list, at once
    wait_for(lambda: source.reads == 2)
    wait_for(lambda: memo.get("popular", source) == [2])


def test_a_failing_source_surfaces_once_the_entry_is_too_stale() -> None:
    memo, source = TtlMemo(ttl_s=0.05, max_stale_s=0.2), Source()
    assert memo.get("popular", source) == [1]
    source.failing = True
    time.sleep(0.06)
    assert memo.get("popular", source) == [1]  # the background refresh fails quietly
    time.sleep(0.25)
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

    cache = ItemCache(ttl_s=0.05, max_stale_s=10.0)
    assert cache.get_many(["a"], fetch) == {"a": {"v": 1}}
    versions["a"] = 2
    time.sleep(0.06)
    # "a" expired: served as it was, refreshed in the background; "b" never cached: read now.
    assert cache.get_many(["a", "b"], fetch) == {"a": {"v": 1}, "b": {"v": 1}}
    wait_for(lambda: cache.get_many(["a"], fetch) == {"a": {"v": 2}})
    assert ["b"] in fetched and ["a"] in fetched


def test_items_expiring_together_are_refreshed_in_one_read() -> None:
    fetched: list[list[str]] = []

    def fetch(ids: list[str]) -> dict[str, dict[str, int]]:
        fetched.append(sorted(ids))
        return {i: {"v": len(fetched)} for i in ids}

    cache = ItemCache(ttl_s=0.05, max_stale_s=10.0, gather_s=0.2)
    cache.get_many(["a", "b", "c"], fetch)
    time.sleep(0.06)
    for item in ("a", "b", "c"):  # three requests, each finding one item expired
        assert cache.get_many([item], fetch) == {item: {"v": 1}}
    wait_for(lambda: len(fetched) == 2)
    assert fetched[1] == ["a", "b", "c"]
    wait_for(lambda: cache.get_many(["a", "b", "c"], fetch) == {i: {"v": 2} for i in "abc"})
