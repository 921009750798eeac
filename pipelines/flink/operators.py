"""The Flink operators of the speed layer: parse, event time, and the live-feature sink.

The feature computation itself is the feature store's (`feature_store.live_writes.LiveWriter`,
driven by `feature_store.definitions`): this job only feeds it events, in event-time order as far
as the watermark allows, and decides what is too late. Each operator opens its own Redis
connection in `open()` (one per task, never at import or pickling time) and receives only plain
values (`JobParams`) from the job builder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pyflink.common import Types
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import FlatMapFunction, ProcessFunction, RuntimeContext

from feature_store.redis_client import ConnectionSpec
from pipelines.flink import features

log = logging.getLogger(__name__)

#: (event JSON line, event time ms): the line travels unparsed to the sink, which validates it once more.
EVENT_TYPE_INFO = Types.TUPLE([Types.STRING(), Types.LONG()])


@dataclass(frozen=True)
class JobParams:
    """Plain values the operators need; pickled into every task."""

    redis: ConnectionSpec
    catalog_dir: str
    dedup_ttl_s: float
    allowed_lateness_ms: int
    max_future_skew_s: float


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


class WriteLiveFeatures(ProcessFunction):
    """Applies each event to the live views through the feature store's idempotent `LiveWriter`.

    Events older than the watermark minus the allowed lateness are not applied (the next batch run
    covers them: they are in the event log); they are counted and logged.
    """

    def __init__(self, params: JobParams) -> None:
        self.params = params

    def open(self, runtime_context: RuntimeContext) -> None:
        from feature_store.live_writes import LiveWriter

        self.categories = load_item_categories(self.params.catalog_dir)
        self.writer = LiveWriter(self.params.redis, self.params.dedup_ttl_s, self.params.max_future_skew_s)
        self.too_late = runtime_context.get_metrics_group().counter("too_late_events")

    def process_element(self, value: tuple[str, int], ctx: ProcessFunction.Context) -> Iterator[Any]:
        line, ts_ms = value
        watermark = ctx.timer_service().current_watermark()
        if features.is_too_late(ts_ms, watermark, self.params.allowed_lateness_ms):
            self.too_late.inc()
            log.warning("too late for the speed layer (event time %d, watermark %d): %s", ts_ms, watermark, line[:200])
            return iter(())
        event = features.parse_event_line(line)
        self.writer.write([event], item_categories={event.item_id: self.categories.get(event.item_id, [])})
        return iter(())

    def close(self) -> None:
        self.writer.close()


def load_item_categories(catalog_dir: str) -> dict[str, list[str]]:
    """item_id -> categories from the catalog (loaded once per task; catalogs are small)."""
    from feature_store.catalog import Catalog

    table = Catalog(Path(catalog_dir)).items_table(columns=["item_id", "categories"])
    if table.num_rows == 0:
        log.warning("no item catalog under %s: category features will stay empty", catalog_dir)
    items = table.column("item_id").to_pylist()
    return {item: list(cats or []) for item, cats in zip(items, table.column("categories").to_pylist())}
