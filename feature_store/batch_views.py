"""Publishing batch views: write a whole new version, then switch readers to it in one atomic step.

    with store.publish_batch_view(Entity.ITEM, watermark) as writer:
        df.foreachPartition(writer)        # Spark: each executor opens its own connection
        # or: writer(rows) for rows computed in this process

On leaving the block without an exception the version pointer `P:batch:{E}:current` is switched by
one Lua script (so a reader, whose read script reads the pointer and the rows atomically, sees the
old view or the new one, never a mix); the replaced version is deleted after
`settings.feature_store.batch_grace_s`. On an exception the half-written version is deleted and
the pointer is untouched. `collect_garbage` also removes publishes abandoned by a crashed driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import redis

from feature_store.definitions import ENTITY_KEYS, WATERMARK_ALIGNMENT, Entity, FeatureDef, entity_id
from feature_store.errors import BatchViewError
from feature_store.redis_client import ConnectionSpec, translate_errors
from feature_store.redis_layout import KeyLayout, encode_row

# KEYS: pointer, staging, retired; ARGV: new version, retire-at ms. Returns the replaced version.
_SWITCH = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if old and old ~= ARGV[1] then redis.call('ZADD', KEYS[3], ARGV[2], old) end
return old
"""


def watermark_ms(watermark: datetime) -> int:
    """Epoch milliseconds of an aware, hour-aligned watermark; a clear error otherwise."""
    if watermark.tzinfo is None:
        raise BatchViewError(f"watermark {watermark} must be timezone-aware (UTC)")
    ms = int(watermark.astimezone(timezone.utc).timestamp() * 1000)
    align_ms = int(WATERMARK_ALIGNMENT.total_seconds() * 1000)
    if ms % align_ms:
        raise BatchViewError(
            f"watermark {watermark.isoformat()} is not aligned to {WATERMARK_ALIGNMENT}: cut the batch at an "
            "hour boundary so the speed layer's hourly counts after it are exact"
        )
    return ms


def _row_mapping(row: Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    if hasattr(row, "asDict"):  # pyspark.sql.Row, without importing Spark here
        return row.asDict()
    raise BatchViewError(f"a batch view row must be a mapping or a Spark Row, got {type(row).__name__}")


@dataclass(frozen=True)
class BatchViewWriter:
    """Writes rows of one batch view version; picklable, so Spark ships it to executors.

    Call it with an iterable of rows (mappings or Spark Rows holding the key columns and every
    batch feature column); it opens one connection, pipelines `batch_size` rows per round trip,
    and returns the number of rows written. None values read back as the feature's default.
    """

    spec: ConnectionSpec
    entity: Entity
    version: str
    features: tuple[FeatureDef, ...]
    batch_size: int = 1000

    def __call__(self, rows: Iterable[Any]) -> int:
        layout = KeyLayout(self.spec.key_prefix)
        client = self.spec.client()
        written = 0
        try:
            with translate_errors(self.spec, f"writing {self.entity} batch view v{self.version}"):
                pipe = client.pipeline(transaction=False)
                for index, row in enumerate(rows):
                    key, encoded = self._encode(layout, _row_mapping(row), index)
                    pipe.set(key, encoded)
                    written += 1
                    if written % self.batch_size == 0:
                        pipe.execute()
                pipe.hincrby(layout.meta(self.entity, self.version), "n", written)
                pipe.execute()
        finally:
            client.close()
        return written

    def _encode(self, layout: KeyLayout, row: Mapping[str, Any], index: int) -> tuple[str, str]:
        expected = set(ENTITY_KEYS[self.entity]) | {f.name for f in self.features}
        if set(row) != expected:
            missing, extra = sorted(expected - set(row)), sorted(set(row) - expected)
            raise BatchViewError(
                f"{self.entity} batch view row {index}: missing columns {missing}, unexpected columns {extra}"
            )
        try:
            key = layout.batch_row(self.entity, self.version, entity_id(self.entity, row))
            return key, encode_row(self.features, row)
        except (ValueError, TypeError) as exc:
            raise BatchViewError(f"{self.entity} batch view row {index}: {exc}") from exc


class BatchViewPublish:
    """One publish of a batch view; use through `RedisOnlineStore.publish_batch_view` (a context manager)."""

    def __init__(self, client: redis.Redis, spec: ConnectionSpec, entity: Entity, features: list[FeatureDef],
                 watermark: datetime, grace_s: float, batch_size: int) -> None:
        self._client, self._spec, self.entity = client, spec, entity
        self._layout = KeyLayout(spec.key_prefix)
        self._features = tuple(features)
        self.watermark_ms = watermark_ms(watermark)
        self._grace_ms = int(grace_s * 1000)
        self._batch_size = batch_size
        self.version: str | None = None

    def begin(self) -> BatchViewWriter:
        """Allocate a version, record its metadata and return the writer for its rows."""
        layout, entity = self._layout, self.entity
        with translate_errors(self._spec, f"starting a {entity} batch view publish"):
            self.version = str(self._client.incr(layout.version_counter(entity)))
            meta = {"wm": self.watermark_ms, "n": 0, **{f"f:{f.name}": i for i, f in enumerate(self._features)}}
            # Staging first: a driver dying before the meta is written leaves a version that
            # `collect_garbage` finds. Not a transaction, which a cluster pipeline cannot run.
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(layout.staging(entity), {self.version: _now_ms()})
            pipe.hset(layout.meta(entity, self.version), mapping=meta)
            pipe.execute()
        return BatchViewWriter(self._spec, entity, self.version, self._features, self._batch_size)

    def commit(self) -> str | None:
        """Switch readers to this version atomically; returns the replaced version (None if first)."""
        if self.version is None:
            raise BatchViewError("commit() before begin()")
        layout, entity = self._layout, self.entity
        with translate_errors(self._spec, f"switching the {entity} batch view to v{self.version}"):
            old = self._client.eval(_SWITCH, 3, layout.pointer(entity), layout.staging(entity),
                                    layout.retired(entity), self.version, _now_ms() + self._grace_ms)
        return old.decode() if old else None

    def abort(self) -> None:
        """Delete this unfinished version; readers never saw it."""
        if self.version is not None:
            with translate_errors(self._spec, f"aborting the {self.entity} batch view v{self.version}"):
                delete_version(self._client, self._layout, self.entity, self.version)
                self._client.zrem(self._layout.staging(self.entity), self.version)


def delete_version(client: redis.Redis, layout: KeyLayout, entity: Entity, version: str) -> int:
    """Delete every key of one batch version (SCAN + UNLINK in batches); returns keys deleted."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=layout.batch_rows_pattern(entity, version), count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted + client.unlink(layout.meta(entity, version))


def collect_garbage(client: redis.Redis, layout: KeyLayout, entity: Entity, staging_max_age_s: float) -> list[str]:
    """Delete retired versions past their grace period and publishes abandoned for too long."""
    now = _now_ms()
    due = [v.decode() for v in client.zrangebyscore(layout.retired(entity), "-inf", now)]
    stale = [v.decode() for v in client.zrangebyscore(layout.staging(entity), "-inf",
                                                      now - int(staging_max_age_s * 1000))]
    current = client.get(layout.pointer(entity))
    for version in due + stale:
        if current is not None and version == current.decode():
            continue
        delete_version(client, layout, entity, version)
    if due:
        client.zrem(layout.retired(entity), *due)
    if stale:
        client.zrem(layout.staging(entity), *stale)
    return due + stale


def _now_ms() -> int:
    return int(time.time() * 1000)
