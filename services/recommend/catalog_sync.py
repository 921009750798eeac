"""Loads the Parquet catalog (`feature_store.catalog`: items and users, written by
`recsys data import-*`, `synth` and batch tooling) into the API's online catalog in Redis.

The API reads titles, categories, availability and user profiles from Redis (`ServingStore`); the
Parquet files are where bulk imports land. At startup each API process calls `CatalogSync.start()`,
which syncs in a background thread (so a million-item catalog never delays serving) each file that
differs from the one last synced:

    <prefix>:srv:catalog_sync:items  hash     mtime_ns, size, rows, stored, skipped, invalid, synced_at_ms
    <prefix>:srv:catalog_sync:users  hash     the same for users.parquet
    <prefix>:srv:catalog_sync:lock   string   held (with a TTL) by the one process syncing

A process that finds the lock held waits in its background thread (state `busy`) until the lock is
released or expires, then checks the file versions again and syncs what is still unsynced: a holder
that failed, or died and left its lock to expire, does not leave the catalog out of Redis.

Rows are streamed in record batches and written with pipelines (`ServingStore.sync_items` /
`sync_users`), so memory is bounded by one batch. A row that is not a valid entry (one written
before ids and metadata were checked, or by other tools) is skipped and reported (logged with its
file and row, counted in `invalid`, shown by /readyz): it never stops the rows after it.

The Parquet file is the durable source of truth: `PUT /v1/items` and `PUT /v1/users` write the entry
through to it (`Catalog.upsert_*`) before Redis, so a later import or sync carries the PUT's values.
Against a sync that read an older file while a PUT landed, "the newer write wins": a PUT records
its time in Redis, and a row from a file whose mtime is older than that PUT is skipped. The sync is
idempotent (re-running it writes the same values); it adds and updates entries but never deletes
one missing from the file (retire an item with `available: false`). A PUT rewrites the Parquet file
(O(catalog) per PUT): fine for editorial updates, not for streaming millions of item changes,
which belong in a bulk import.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from feature_store.catalog import ITEMS_FILE, USERS_FILE, Catalog, InvalidRow
from feature_store.schemas import Item, User
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
    status: str  # synced, up_to_date, no_catalog, busy (another process holds the lock), stopped
    rows: int = 0
    stored: int = 0
    skipped: int = 0  # rows older than a PUT of the same entry
    invalid: int = 0  # rows that are not valid entries
    seconds: float = 0.0

    def __add__(self, other: SyncResult) -> SyncResult:
        status = "stopped" if "stopped" in (self.status, other.status) else "synced"
        return SyncResult(status, self.rows + other.rows, self.stored + other.stored, self.skipped + other.skipped,
                          self.invalid + other.invalid, self.seconds + other.seconds)


@dataclass(frozen=True)
class _Source:
    """One catalog file and how its rows are read and stored."""

    name: str  # items, users
    path: Path
    read: Callable[[int], Iterator[Item | User | InvalidRow]]
    store: Callable[[Sequence[Any], int], int]


class CatalogSync:
    """Syncs the catalog's items.parquet and users.parquet into the serving store; `state` says
    where it stands, `invalid_count` and `invalid_rows` (the first `MAX_REPORTED`) what was skipped."""

    MAX_REPORTED = 20

    def __init__(
        self, store: ServingStore, catalog: Catalog, batch_size: int = 1000, lock_ttl_s: int = 600,
        lock_poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.sources = (
            _Source("items", catalog.root / ITEMS_FILE, catalog.checked_items, store.sync_items),
            _Source("users", catalog.root / USERS_FILE, catalog.checked_users, store.sync_users),
        )
        self.batch_size = batch_size
        self.lock_ttl_s = lock_ttl_s
        self.lock_poll_s = lock_poll_s
        self.state = "idle"  # idle → syncing (busy: waiting) → synced / up_to_date / no_catalog / failed: …
        self.invalid_count = 0
        self.invalid_rows: list[InvalidRow] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._release_lock = store.client.register_script(_RELEASE_LOCK)

    def record_key(self, name: str) -> str:
        """The hash recording the last synced version of catalog file `name` (items, users)."""
        return self._key(name)

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
            result = self._sync_after_others()
        except (DegradedError, redis.RedisError, OSError, ValueError) as exc:
            self.state = f"failed: {type(exc).__name__}: {exc}"
            log.error("catalog sync from %s failed: %s", self.catalog.root, exc)
            return
        self.state = result.status
        if result.status == "synced":
            log.info("catalog sync: %d rows from %s, %d stored, %d older than a PUT, %d invalid, in %.1fs",
                     result.rows, self.catalog.root, result.stored, result.skipped, result.invalid, result.seconds)

    def _sync_after_others(self) -> SyncResult:
        """`sync`; while another process holds the lock, wait until it is released or expires and
        sync again: the holder may have failed, died (its lock outlives it by up to the TTL) or
        synced an older file, and the versions are checked afresh."""
        while True:
            result = self.sync()
            if result.status != "busy":
                return result
            self.state = "busy"
            if not self._wait_for_lock():
                return result

    def _wait_for_lock(self) -> bool:
        """Poll until the sync lock is gone (at most its TTL); False if asked to stop first."""
        while self.store.client.exists(self._key("lock")):
            if self._stop.wait(self.lock_poll_s):
                return False
        return True

    def sync(self) -> SyncResult:
        """Sync now each file that changed since its last recorded sync (this thread or process)."""
        self.state = "syncing"
        versions = [(source, FileVersion.of(source.path)) for source in self.sources]
        if all(version is None for _, version in versions):
            return SyncResult("no_catalog")
        changed = [(s, v) for s, v in versions if v is not None and self._last_synced(s.name) != v]
        if not changed:
            return SyncResult("up_to_date")
        token = uuid.uuid4().hex
        if not self.store.client.set(self._key("lock"), token, nx=True, ex=self.lock_ttl_s):
            return SyncResult("busy")
        try:
            total = SyncResult("synced")
            for source, version in changed:
                total += self._copy(source, version)
                if total.status == "stopped":
                    break
            return total
        finally:
            self._release_lock(keys=[self._key("lock")], args=[token])

    def _last_synced(self, name: str) -> FileVersion | None:
        raw = self.store.client.hmget(self.record_key(name), ["mtime_ns", "size"])
        if raw[0] is None or raw[1] is None:
            return None
        return FileVersion(int(raw[0]), int(raw[1]))

    def _copy(self, source: _Source, version: FileVersion) -> SyncResult:
        started = time.perf_counter()
        valid = stored = invalid = 0
        batch: list[Any] = []
        for entry in source.read(self.batch_size):
            if isinstance(entry, InvalidRow):
                invalid += 1
                self._report(entry)
                continue
            batch.append(entry)
            if len(batch) >= self.batch_size:
                valid, stored, batch = valid + len(batch), stored + source.store(batch, version.mtime_ms), []
                if self._stop.is_set():  # shutting down: leave the version unrecorded, resync next start
                    return _result("stopped", valid, stored, invalid, started)
        valid, stored = valid + len(batch), stored + source.store(batch, version.mtime_ms)
        if FileVersion.of(source.path) != version:
            log.info("catalog file %s changed during the sync: the next start syncs it again", source.path)
        result = _result("synced", valid, stored, invalid, started)
        record = {"mtime_ns": version.mtime_ns, "size": version.size, "rows": result.rows, "stored": stored,
                  "skipped": result.skipped, "invalid": invalid, "synced_at_ms": int(time.time() * 1000)}
        self.store.client.hset(self.record_key(source.name), mapping=record)
        return result

    def _report(self, row: InvalidRow) -> None:
        self.invalid_count += 1
        if len(self.invalid_rows) < self.MAX_REPORTED:
            self.invalid_rows.append(row)
            log.warning("catalog sync: skipping %s", row)


def _result(status: str, valid: int, stored: int, invalid: int, started: float) -> SyncResult:
    return SyncResult(status, valid + invalid, stored, valid - stored, invalid, time.perf_counter() - started)
