"""The Flink operators of the speed layer: parse, event time, key, and the attribution join.

The join logic is `pipelines.flink.join.AttributionJoin` (plain Python, tested without Flink);
`Attribute` gives it Flink's keyed state and event-time timers. The counts go through the feature
store's idempotent `AttributionStore`, LinUCB's statistics through its `LinUcbStore`. Each operator opens its own Redis connection in `open()`
(one per task, never at import or pickling time) and receives only plain values (`JobParams`)
from the job builder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, KeySelector, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from feature_store.attribution import Impression, Outcome, is_outcome
from feature_store.definitions import join_key
from feature_store.redis_client import ConnectionSpec
from feature_store.schemas import EventType
from pipelines.flink import features
from pipelines.flink.join import KeyState

log = logging.getLogger(__name__)

#: (event JSON line, event time ms): the line travels unparsed to the join, which validates it once more.
EVENT_TYPE_INFO = Types.TUPLE([Types.STRING(), Types.LONG()])


@dataclass(frozen=True)
class JobParams:
    """Plain values the operators need; pickled into every task."""

    redis: ConnectionSpec
    dedup_ttl_s: float
    allowed_lateness_ms: int
    max_future_skew_s: float
    window_ms: int
    recent_outcomes: int
    linucb_dim: int
    linucb_ridge: float


class ParseEvents(FlatMapFunction):
    """JSON line -> (line, event time); a malformed line is logged and skipped, nothing else lost.

    An event dated more than `max_future_skew_s` ahead of the clock (logged before the API checked
    it) is skipped too, before it reaches the watermark: it would move the event-time watermark past
    every real event, and make them all too late.

    Flink's text-line source does not carry file names, so the log names the line's content; the
    batch layer's compact job writes the same rejects aside with their file and line.
    """

    def __init__(self, max_future_skew_s: float) -> None:
        self.max_future_skew_ms = int(max_future_skew_s * 1000)

    def flat_map(self, value: str) -> Iterator[tuple[str, int]]:
        if not value.strip():
            return
        try:
            event = features.parse_event_line(value)
        except features.BadEventLine as exc:
            log.warning("event log: skipping malformed line: %s", exc)
            return
        ts_ms = features.event_time_ms(event)
        if features.is_in_the_future(ts_ms, int(time.time() * 1000), self.max_future_skew_ms):
            log.warning("event log: skipping an event dated ahead of the clock: %s", value[:200])
            return
        yield value, ts_ms


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value: tuple[str, int], record_timestamp: int) -> int:
        return int(value[1])


class UserItem(KeySelector):
    """The join key: (user, item), as `attribution.join_key` spells it."""

    def get_key(self, value: tuple[str, int]) -> str:
        event = json.loads(value[0])
        return join_key(event["user_id"], event["item_id"])


class Attribute(KeyedProcessFunction):
    """Attributes outcomes to impressions per (user, item) in event time (`join.AttributionJoin`).

    State: one value state per key (`join.KeyState`: impressions and pending outcomes),
    checkpointed, with event-time timers that clear its entries once the watermark passes them,
    and a processing-time TTL of twice the time they are needed as a bound should the watermark
    stall. Outcomes older than the watermark minus
    the allowed lateness are too late: counted (`late` in the store, metric `too_late_events`),
    left to the batch layer; too-late impressions are only logged and counted in the metric.
    """

    def __init__(self, params: JobParams) -> None:
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        from feature_store.attribution_store import RedisAttributionStore
        from feature_store.linucb_store import RedisLinUcbStore
        from pipelines.flink.join import AttributionJoin

        params = self.params
        keep_ms = params.window_ms + params.allowed_lateness_ms
        descriptor = ValueStateDescriptor("attribution", Types.STRING())
        descriptor.enable_time_to_live(StateTtlConfig.new_builder(Time.milliseconds(2 * keep_ms)).build())
        self.state = runtime_context.get_state(descriptor)
        self.store = RedisAttributionStore(params.redis, params.dedup_ttl_s, params.max_future_skew_s, params.recent_outcomes)
        self.linucb = RedisLinUcbStore(params.redis, params.linucb_dim, params.linucb_ridge, params.dedup_ttl_s)
        self.join = AttributionJoin(self.store, params.window_ms, params.allowed_lateness_ms, self.linucb)
        self.metrics = runtime_context.get_metrics_group()
        self.counters: dict[str, Any] = {}

    def process_element(self, value: tuple[str, int], ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        line, ts_ms = value
        event = features.parse_event_line(line)
        if event.type is not EventType.IMPRESSION and not is_outcome(event):
            return iter(())
        timers = ctx.timer_service()
        if features.is_too_late(ts_ms, timers.current_watermark(), self.params.allowed_lateness_ms):
            self._count("too_late_events")
            log.warning("too late for the speed layer (event time %d, watermark %d): %s",
                        ts_ms, timers.current_watermark(), line[:200])
            if is_outcome(event):
                self.join.late(Outcome.of(event))
            self._flush_tally()
            return iter(())
        state = KeyState(self.state.value())
        if event.type is EventType.IMPRESSION:
            decide_at: int | None = self.join.impression(Impression.of(event), state.impressions, state.pending)
        else:
            decide_at = self.join.outcome(Outcome.of(event), state.impressions, state.pending)
        if decide_at is not None:
            timers.register_event_time_timer(decide_at)
        self._save(state)
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        state = KeyState(self.state.value())
        self.join.fire(timestamp, state.impressions, state.pending)
        self._save(state)
        return iter(())

    def _save(self, state: KeyState) -> None:
        document = state.dump()
        if document is None:
            self.state.clear()
        else:
            self.state.update(document)
        self._flush_tally()

    def _flush_tally(self) -> None:
        for name, n in self.join.tally.items():
            self._count(name, n)
        self.join.tally.clear()

    def _count(self, name: str, n: int = 1) -> None:
        if name not in self.counters:
            self.counters[name] = self.metrics.counter(name)
        self.counters[name].inc(n)

    def close(self) -> None:
        self.store.close()
        self.linucb.close()
