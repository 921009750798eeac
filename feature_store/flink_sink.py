"""Writing live views from a PyFlink job: a process function that batches and pipelines its writes.

    from feature_store.flink_sink import live_feature_sink
    events.process(live_feature_sink(ConnectionSpec.from_settings(settings), settings.feature_store))
          .print()   # or any sink: it emits one summary string per flush

Each parallel instance opens one connection (in `open`), buffers up to `batch_size` events or
`max_delay_s`, and applies them with `LiveWriter` (one Lua call per batch). Input elements are
event JSON strings (event-log lines) or dicts. Writes are idempotent (per-event replay markers),
so Flink's at-least-once replay after a failure does not double-count. Events still buffered
when a task fails are replayed from the source's last checkpoint only if they arrived after it;
keep `max_delay_s` below the checkpoint interval (the default 0.2 s is well below 5 s).

PyFlink is imported only when `live_feature_sink` is called.
"""

from __future__ import annotations

import json
import time
from typing import Any

from feature_store.live_writes import LiveWriter
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import FeatureStoreSettings


class BufferedLiveWrites:
    """The Flink-independent part: buffer events, flush them through one `LiveWriter`."""

    def __init__(self, spec: ConnectionSpec, config: FeatureStoreSettings, batch_size: int = 256,
                 max_delay_s: float = 0.2) -> None:
        self.spec, self.config = spec, config
        self.batch_size, self.max_delay_s = batch_size, max_delay_s
        self._store: RedisOnlineStore | None = None
        self._writer: LiveWriter | None = None
        self._buffer: list[dict[str, Any]] = []
        self._oldest = 0.0

    def open(self) -> None:
        # through the store, so category features look item categories up in the item batch view
        self._store = RedisOnlineStore(self.spec, self.config)
        self._writer = self._store.live_writer()

    def add(self, element: str | dict[str, Any]) -> str | None:
        """Buffer one event; returns a summary line when this call flushed."""
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(json.loads(element) if isinstance(element, str) else element)
        if len(self._buffer) >= self.batch_size or time.monotonic() - self._oldest >= self.max_delay_s:
            return self.flush()
        return None

    def flush(self) -> str | None:
        if not self._buffer or self._writer is None:
            return None
        events, self._buffer = self._buffer, []
        result = self._writer.write(events)
        return f"live writes: {result.applied} applied, {result.duplicates} replays, {result.too_late} too late"

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._store is not None:
            self._store.close()
            self._store = None


def live_feature_sink(spec: ConnectionSpec, config: FeatureStoreSettings, batch_size: int = 256,
                      max_delay_s: float = 0.2) -> Any:
    """A PyFlink `ProcessFunction` applying events to the live views; emits flush summaries."""
    from pyflink.datastream import ProcessFunction

    class LiveFeatureSink(ProcessFunction):  # type: ignore[misc]
        def __init__(self) -> None:
            self.writes = BufferedLiveWrites(spec, config, batch_size, max_delay_s)

        def open(self, runtime_context: Any) -> None:
            self.writes.open()

        def process_element(self, value: Any, ctx: Any) -> Any:
            summary = self.writes.add(value)
            if summary:
                yield summary

        def close(self) -> None:
            self.writes.close()

    return LiveFeatureSink()
