"""The stream job's writer without Flink: records survive their encoding, and `GroupCommit` puts
concurrent submissions into few calls, each result going back to its own submitter, and a failed
call fails every record in it. Then the batch path against a real Redis: the results and counts of
`record_many` equal those of the records applied one by one, and an event is decided once."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from feature_store.attribution import Dimension, Impression, Outcome
from feature_store.attribution_store import (
    CreditRecord, ImpressionRecord, LateImpressionRecord, Miss, MissRecord, Record, RecordResult, RedisAttributionStore,
)
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import Settings
from pipelines.flink.sink import GroupCommit, decode_record, encode_record, record_kind


def records(now_ms: int) -> list[Record]:
    shown = Impression("i1", "u:1", "item|1", now_ms, "r1", 2, "ranker=a;explore=greedy", "exp", "B")
    bare = Impression("i2", "u2", "item2", now_ms - 5, None, None, None, None, None)
    dropped = Impression("i3", "u2", "item2", now_ms - 7, "r3", 0, None, None, None)
    click = Outcome("c1", "u:1", "item|1", "click", now_ms + 10, "r1")
    bought = Outcome("c3", "u2", "item2", "purchase", now_ms, None)
    return [ImpressionRecord(shown), ImpressionRecord(bare), CreditRecord(shown, click),
            CreditRecord(shown, Outcome("c2", "u:1", "item|1", "click", now_ms + 20, None)),
            MissRecord(bought, Miss.UNATTRIBUTED), MissRecord(click, Miss.LATE), ImpressionRecord(shown),
            MissRecord(Outcome("c4", "u:1", "item|1", "click", now_ms - 10, None), Miss.LATE),
            LateImpressionRecord(dropped), ImpressionRecord(dropped), CreditRecord(bare, bought)]


def test_records_survive_their_encoding() -> None:
    for record in records(1_700_000_000_000):
        assert decode_record(encode_record(record)) == record
    assert [record_kind(r) for r in records(0)] == ["impression", "impression", "credit", "credit", "unattributed",
                                                    "late", "impression", "late", "late_impression", "impression",
                                                    "credit"]


def test_group_commit_batches_what_arrives_while_a_call_runs() -> None:
    calls: list[list[int]] = []

    def apply(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.01)  # a round trip: what is submitted meanwhile waits for the next call
        return [10 * item for item in items]

    async def main() -> list[int]:
        commit: GroupCommit[int, int] = GroupCommit(apply, max_batch=40)
        return await asyncio.gather(*(commit.submit(n) for n in range(100)))

    assert asyncio.run(main()) == [10 * n for n in range(100)]
    assert sorted(n for call in calls for n in call) == list(range(100))
    assert len(calls) <= 4 and max(len(call) for call in calls) == 40


def test_a_failed_call_fails_each_of_its_records() -> None:
    def apply(items: list[int]) -> list[int]:
        if 3 in items:
            raise ConnectionError("redis went away")
        return items

    async def main() -> list[object]:
        commit: GroupCommit[int, int] = GroupCommit(apply, max_batch=5)
        return await asyncio.gather(*(commit.submit(n) for n in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r) for r in results[:5]] == [ConnectionError] * 5 and results[5:] == [5, 6, 7, 8, 9]


@pytest.fixture
def spec(settings: Settings, redis_client: redis.Redis) -> ConnectionSpec:
    return ConnectionSpec(settings.redis.url or "")


def test_record_many_equals_the_records_one_by_one(spec: ConnectionSpec) -> None:
    now = int(time.time() * 1000)
    batch = RedisAttributionStore(ConnectionSpec(spec.url, key_prefix="batch"), 86400, 900)
    single = RedisAttributionStore(ConnectionSpec(spec.url, key_prefix="single"), 86400, 900)
    planted = records(now) + [ImpressionRecord(Impression("old", "u", "i", now - 3 * 86400_000, None, 0, None, None, None))]
    results = batch.record_many(planted, now)
    assert results == [single.record_many([r], now)[0] for r in planted]
    applied, duplicate = RecordResult.APPLIED, RecordResult.DUPLICATE
    # Duplicates: the second click on one impression, the impression's retry, and whatever decides
    # again an event already decided (a credited click counted late, a dropped impression counted,
    # an unattributed purchase credited). The old one is not applied.
    assert results == [applied, applied, applied, duplicate, applied, duplicate, duplicate, applied, applied,
                       duplicate, duplicate, RecordResult.TOO_OLD]
    for dimension in Dimension.ALL:
        assert set(batch.scan_counts(dimension)) == set(single.scan_counts(dimension)) != set()
    assert batch.counts(Dimension.ITEM, "item2", 0, 2**62) == {"impression": 1}
    assert batch.misses(0, 2**62) == single.misses(0, 2**62) == {"unattributed:purchase": 1, "late:click": 1}
    assert batch.record_many(planted, now) == [RecordResult.DUPLICATE] * 11 + [RecordResult.TOO_OLD]
