"""Loads the Parquet item catalog (`feature_store.catalog`, written by `recsys data import-*`,
`synth` and batch tooling) into the API's online catalog in Redis.

The API reads titles, categories and availability from Redis (`ServingStore`); the Parquet file is
where bulk imports land. At startup each API process calls `CatalogSync.start()`, which syncs in a
background thread (so a million-item catalog never delays serving) when the file differs from the
one last synced:

    <prefix>:srv:catalog_sync        hash     mtime_ns, size, rows, stored, skipped, synced_at_ms
    <prefix>:srv:catalog_sync:lock   string   held (with a TTL) by the one process syncing

Rows are streamed in record batches and written with pipelines (`ServingStore.sync_items`), so
memory is bounded by one batch.

The Parquet file is the durable source of truth: `PUT /v1/items` writes the item through to it
(`Catalog.upsert_items`) before Redis, so a later import or sync carries the PUT's values. Against
a sync that read an older file while a PUT landed, "the newer write wins": a PUT records its time
in Redis, and a row from a file whose mtime is older than that PUT is skipped. The sync is
idempotent (re-running it writes the same values); it adds and updates items but never deletes one
missing from the file (retire an item with `available: false`). A PUT rewrites the Parquet file
(O(catalog) per PUT): fine for editorial updates, not for streaming millions of item changes,
which belong in a bulk import.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from feature_store.catalog import ITEMS_FILE, Catalog
from feature_store.schemas import Item
from services.recommend.online_store import ServingStore
from services.recommend.types import DegradedError

log = logging.getLogger(__name__)

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class FileVersion:
    """What identifies one version of the catalog file (it is only ever replaced by rename)."""

    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> FileVersion | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return cls(stat.st_mtime_ns, stat.st_size)

    @property
    def mtime_ms(self) -> int:
        return self.mtime_ns // 1_000_000


@dataclass(frozen=True)
class SyncResult:
    status: str  # synced, up_to_date, no_catalog, busy (another process is syncing), stopped
    rows: int = 0
    stored: int = 0
    skipped: int = 0  # rows older than a PUT of the same item
    seconds: float = 0.0


class CatalogSync:
    """Syncs `<catalog_dir>/items.parquet` into the serving store; `state` says where it stands."""

    def __init__(
        self, store: ServingStore, catalog_dir: Path, batch_size: int = 1000, lock_ttl_s: int = 600
    ) -> None:
        self.store = store
        self.path = Path(catalog_dir) / ITEMS_FILE
        self.catalog = Catalog(Path(catalog_dir))
        self.batch_size = batch_size
        self.lock_ttl_s = lock_ttl_s
        self.state = "idle"  # idle → syncing → synced / up_to_date / no_catalog / busy / failed: …
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_lock = store.client.register_script(_RELEASE_LOCK)

    def _key(self, *parts: str) -> str:
        return self.store.prefix + ":".join(("catalog_sync", *parts))

    def start(self) -> None:
        """Sync in a daemon thread; errors are logged and kept in `state`, never raised."""
        self._thread = threading.Thread(target=self._run_logged, name="catalog-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop after its current batch and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the background sync ends; returns `state`."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.state

    def _run_logged(self) -> None:
        try:
            result = self.sync()
        except (DegradedError, redis.RedisError, OSError, ValueError) as exc:
            self.state = f"failed: {type(exc).__name__}: {exc}"
            log.error("catalog sync from %s failed: %s", self.path, exc)
            return
        self.state = result.status
        if result.status == "synced":
            log.info("catalog sync: %d rows from %s, %d stored, %d older than a PUT, in %.1fs",
                     result.rows, self.path, result.stored, result.skipped, result.seconds)

    def sync(self) -> SyncResult:
        """Sync now if the file changed since the last recorded sync (this thread or process)."""
        self.state = "syncing"
        version = FileVersion.of(self.path)
        if version is None:
            return SyncResult("no_catalog")
        if self._last_synced() == version:
            return SyncResult("up_to_date")
        token = uuid.uuid4().hex
        if not self.store.client.set(self._key("lock"), token, nx=True, ex=self.lock_ttl_s):
            return SyncResult("busy")
        try:
            return self._copy(version)
        finally:
            self._release_lock(keys=[self._key("lock")], args=[token])

    def _last_synced(self) -> FileVersion | None:
        raw = self.store.client.hmget(self._key(), ["mtime_ns", "size"])
        if raw[0] is None or raw[1] is None:
            return None
        return FileVersion(int(raw[0]), int(raw[1]))

    def _copy(self, version: FileVersion) -> SyncResult:
        started = time.perf_counter()
        rows = stored = 0
        batch: list[Item] = []
        for item in self.catalog.items(batch_size=self.batch_size):
            batch.append(item)
            if len(batch) >= self.batch_size:
                rows, stored = rows + len(batch), stored + self.store.sync_items(batch, version.mtime_ms)
                batch = []
                if self._stop.is_set():  # shutting down: leave the version unrecorded, resync next start
                    return SyncResult("stopped", rows, stored, rows - stored, time.perf_counter() - started)
        rows, stored = rows + len(batch), stored + self.store.sync_items(batch, version.mtime_ms)
        if FileVersion.of(self.path) != version:
            log.info("catalog file %s changed during the sync: the next start syncs it again", self.path)
        record = {"mtime_ns": version.mtime_ns, "size": version.size, "rows": rows, "stored": stored,
                  "skipped": rows - stored, "synced_at_ms": int(time.time() * 1000)}
        self.store.client.hset(self._key(), mapping=record)
        return SyncResult("synced", rows, stored, rows - stored, time.perf_counter() - started)

