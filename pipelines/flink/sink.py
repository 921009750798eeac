"""The speed layer's writes: the join's records to the attribution store, in batches.

`Attribute` emits each record it decides (`encode_record`); `WriteRecords`, a Flink async function
(`AsyncDataStream.unordered_wait`), hands them to a `GroupCommit`, which writes whatever has
arrived while the previous batch was in flight in one pipelined round trip
(`AttributionStore.record_many`), instead of one round trip per record: on a busy machine a round
trip costs a scheduling delay of the Redis server, and these dominated the job's time.

Exactly-once effect: Flink's async operator does not finish a bundle until every record handed
to it has been written, and a checkpoint barrier finishes the bundle first, so no checkpoint
completes with a record unwritten; records written after the last checkpoint are decided and sent
again after a restore, perhaps otherwise, and the store's replay markers make them no-ops (each
event is decided once). A batch is applied in the order its records were decided (one pipeline):
counts add up in any order, and of two decisions about one event the first stands.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Generic, TypeVar

from pyflink.datastream import RuntimeContext
from pyflink.datastream.functions import AsyncFunction

from feature_store.attribution import Impression, Outcome
from feature_store.attribution_store import (
    CreditRecord, ImpressionRecord, LateImpressionRecord, Miss, MissRecord, Record,
)
from pipelines.flink.join import fields_of

T = TypeVar("T")
R = TypeVar("R")
LATE_IMPRESSION = "late_impression"


def encode_record(record: Record) -> str:
    """A record as one JSON string (what travels from the join to the writer)."""
    if isinstance(record, CreditRecord):
        return json.dumps(["credit", fields_of(record.impression), fields_of(record.outcome)])
    if isinstance(record, MissRecord):
        return json.dumps([str(record.miss), fields_of(record.outcome)])
    return json.dumps([record_kind(record), fields_of(record.impression)])


def decode_record(text: str) -> Record:
    kind, *parts = json.loads(text)
    if kind == "impression":
        return ImpressionRecord(Impression(**parts[0]))
    if kind == LATE_IMPRESSION:
        return LateImpressionRecord(Impression(**parts[0]))
    if kind == "credit":
        return CreditRecord(Impression(**parts[0]), Outcome(**parts[1]))
    return MissRecord(Outcome(**parts[0]), Miss(kind))


def record_kind(record: Record) -> str:
    """impression, late_impression, credit, unattributed or late: the metric names' first part."""
    if isinstance(record, ImpressionRecord):
        return "impression"
    if isinstance(record, LateImpressionRecord):
        return LATE_IMPRESSION
    return "credit" if isinstance(record, CreditRecord) else str(record.miss)


class GroupCommit(Generic[T, R]):
    """Batches concurrent submissions (on one event loop) into calls of `apply`: what is submitted
    while a call runs goes into the next one, at most `max_batch` items per call."""

    def __init__(self, apply: Callable[[list[T]], list[R]], max_batch: int) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if self._writer is None:
            self._writer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                await asyncio.sleep(0)  # the submissions already scheduled join this batch
                batch, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
                try:
                    results = self._apply([item for item, _ in batch])  # blocks this loop: the next batch gathers
                except Exception as exc:  # every waiting record fails, and with it the task
                    for _, future in batch:
                        future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results):
                    future.set_result(result)
        finally:
            self._writer = None


class WriteRecords(AsyncFunction):
    """Writes encoded records to Redis through `GroupCommit`; counts the results (metrics
    `<impression|late_impression|credit|unattributed|late>_<applied|duplicate|too_old|in_future>`)."""

    def __init__(self, params: Any, max_batch: int) -> None:
        self.params = params  # operators.JobParams
        self.max_batch = max_batch

    def open(self, runtime_context: RuntimeContext) -> None:
        from feature_store.attribution_store import RedisAttributionStore

        params = self.params
        self.store = RedisAttributionStore(params.redis, params.dedup_ttl_s, params.max_future_skew_s,
                                           params.recent_outcomes, params.server_impression_ttl_s)
        self.commit: GroupCommit[Record, Any] = GroupCommit(self.store.record_many, self.max_batch)
        self.metrics = runtime_context.get_metrics_group()
        self.counters: dict[str, Any] = {}

    async def async_invoke(self, value: str) -> list[Any]:
        record = decode_record(value)
        result = await self.commit.submit(record)
        name = f"{record_kind(record)}_{result}"
        if name not in self.counters:
            self.counters[name] = self.metrics.counter(name)
        self.counters[name].inc()
        return []

    def close(self) -> None:
        self.store.close()
