"""The Flink operators of the speed layer: parse, event time, key, and the attribution join.

The join logic is `pipelines.flink.join.AttributionJoin` (plain Python, tested without Flink);
`Attribute` gives it Flink's keyed state and event-time timers and emits the records it decides,
which `pipelines.flink.sink.WriteRecords` writes to the feature store's idempotent
`AttributionStore` in batches; LinUCB's statistics go through its `LinUcbStore`. Each operator
opens its own Redis connection in `open()` (one per task, never at import or pickling time) and
receives only plain values (`JobParams`) from the job builder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig

from feature_store.attribution import Impression, Outcome, event_ms, is_outcome
from feature_store.definitions import join_key
from feature_store.redis_client import ConnectionSpec
from feature_store.schemas import EventType
from pipelines.flink import features
from pipelines.flink.join import KeyMaps, fields_of
from pipelines.flink.sink import encode_record

log = logging.getLogger(__name__)

#: (Row(join key, record), event time ms): the shape the JVM's own timestamp assigner and key
#: selector read (`job.keyed_in_jvm`), so no Python operator does either. A record is the JSON of
#: ["impression" | "outcome", fields of `attribution.Impression` | `attribution.Outcome`]: the line
#: is validated once, by the parse.
KEYED_RECORD_TYPE_INFO = Types.ROW([Types.STRING(), Types.STRING()])
PARSED_TYPE_INFO = Types.TUPLE([KEYED_RECORD_TYPE_INFO, Types.LONG()])
IMPRESSION, OUTCOME = "impression", "outcome"


@dataclass(frozen=True)
class JobParams:
    """Plain values the operators need; pickled into every task."""

    redis: ConnectionSpec
    dedup_ttl_s: float
    server_impression_ttl_s: float
    allowed_lateness_ms: int
    max_future_skew_s: float
    window_ms: int
    recent_outcomes: int
    linucb_dim: int
    linucb_ridge: float
    writes_in_flight: int


class ParseEvents(FlatMapFunction):
    """JSON line -> (join key, record, event time) for impressions and outcomes; other events are
    not the job's and are dropped here. A malformed line is logged and skipped, nothing else lost.

    An event dated more than `max_future_skew_s` ahead of the clock (logged before the API checked
    it) is skipped too, before it reaches the watermark: it would move the event-time watermark past
    every real event, and make them all too late.

    Flink's text-line source does not carry file names, so the log names the line's content; the
    batch layer's compact job writes the same rejects aside with their file and line.
    """

    def __init__(self, max_future_skew_s: float) -> None:
        self.max_future_skew_ms = int(max_future_skew_s * 1000)

    def flat_map(self, value: str) -> Iterator[tuple[Row, int]]:
        if not value.strip():
            return
        try:
            event = features.parse_event_line(value)
        except features.BadEventLine as exc:
            log.warning("event log: skipping malformed line: %s", exc)
            return
        ts_ms = event_ms(event)
        if features.is_in_the_future(ts_ms, int(time.time() * 1000), self.max_future_skew_ms):
            log.warning("event log: skipping an event dated ahead of the clock: %s", value[:200])
            return
        if event.type is EventType.IMPRESSION:
            record = [IMPRESSION, fields_of(Impression.of(event))]
        elif is_outcome(event):
            record = [OUTCOME, fields_of(Outcome.of(event))]
        else:
            return
        yield Row(join_key(event.user_id, event.item_id), json.dumps(record)), ts_ms


class Attribute(KeyedProcessFunction):
    """Attributes outcomes to impressions per (user, item) in event time (`join.AttributionJoin`).

    State: three map states per key (`join.KeyMaps`), checkpointed, with a processing-time TTL of
    twice the time an entry is needed (window plus allowed lateness), which is what removes most
    impressions: they get no timer, since registering one per impression, and reading the key's
    state when it fires, was paid for every impression. Event-time timers
    decide pending outcomes and finalise the impressions LinUCB learns from. The TTL keeps the
    Python worker's state caches on (`ReturnExpiredIfNotCleanedUp`: an expired impression still
    read is harmless, the rule's window excludes it; `NeverReturnExpired` would switch every
    cache off). Outcomes older than the watermark minus the allowed lateness are too late: counted
    (`late` in the store, metric `too_late_events`), left to the batch layer; too-late impressions
    are logged, counted in the metric, and recorded as dropped (the store counts nothing, and a
    replay after a restart does not count them either). After a restore the watermark is at least
    the checkpoint's (`job.keyed_in_jvm`), so events read again are too late as they were.
    Emits the store's records, encoded (`sink`).
    """

    def __init__(self, params: JobParams) -> None:
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        from feature_store.linucb_store import RedisLinUcbStore
        from pipelines.flink.join import AttributionJoin

        params = self.params
        ttl = (
            StateTtlConfig.new_builder(Time.milliseconds(2 * (params.window_ms + params.allowed_lateness_ms)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .build()
        )

        def map_state(name: str) -> Any:
            descriptor = MapStateDescriptor(name, Types.STRING(), Types.STRING())
            descriptor.enable_time_to_live(ttl)
            return runtime_context.get_map_state(descriptor)

        self.state = KeyMaps(map_state("impressions"), map_state("pending"), map_state("credits"))
        self.linucb = RedisLinUcbStore(params.redis, params.linucb_dim, params.linucb_ridge, params.dedup_ttl_s)
        self.join = AttributionJoin(params.window_ms, params.allowed_lateness_ms, self.linucb)
        self.metrics = runtime_context.get_metrics_group()
        self.counters: dict[str, Any] = {}

    def process_element(self, record: str, ctx: KeyedProcessFunction.Context) -> Iterator[str]:
        ts_ms = ctx.timestamp()
        kind, fields = json.loads(record)
        timers = ctx.timer_service()
        if features.is_too_late(ts_ms, timers.current_watermark(), self.params.allowed_lateness_ms):
            self._count("too_late_events")
            log.warning("too late for the speed layer (event time %d, watermark %d): %s",
                        ts_ms, timers.current_watermark(), record[:200])
            self.join.late(Impression(**fields) if kind == IMPRESSION else Outcome(**fields))
            return self._emit()
        if kind == IMPRESSION:
            decide_at = self.join.impression(Impression(**fields), self.state)
        else:
            decide_at = self.join.outcome(Outcome(**fields), self.state)
        if decide_at is not None:
            timers.register_event_time_timer(decide_at)
        return self._emit()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[str]:
        self.join.fire(timestamp, self.state)
        return self._emit()

    def _emit(self) -> Iterator[str]:
        for name, n in self.join.tally.items():
            self._count(name, n)
        self.join.tally.clear()
        return iter([encode_record(record) for record in self.join.drain()])

    def _count(self, name: str, n: int = 1) -> None:
        if name not in self.counters:
            self.counters[name] = self.metrics.counter(name)
        self.counters[name].inc(n)

    def close(self) -> None:
        self.linucb.close()
