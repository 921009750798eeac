"""The online feature store: one interface, and its Redis implementation.

    store = RedisOnlineStore.from_settings(settings)
    columns = store.get_features("item", ["i1", "i2"], ["popularity_all", "ctr_24h", "categories"])
    columns["ctr_24h"]            # numpy float32 array, one value per id, defaults for unknown ids

    with store.publish_batch_view(Entity.ITEM, watermark) as writer:    # batch layer (Spark driver)
        df.foreachPartition(writer)
    store.live_writer().write(events)                                  # live features (API)
    store.attribution().window_counts("item", "i1", "24h")             # attributed counts (Flink)

Failures: Redis unreachable or too slow raises `FeatureStoreUnavailableError` within the
configured timeouts; an unknown feature name raises `UnknownFeatureError` listing the known ones.
Key layout: `feature_store.redis_layout`; merge rules: `feature_store.online_read`;
both in docs/feature_store.md.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Iterator, Sequence

import numpy as np
from redis.cluster import RedisCluster

from feature_store.attribution_store import AttributionStore, RedisAttributionStore
from feature_store.batch_views import BatchViewPublish, BatchViewWriter, collect_garbage
from feature_store.definitions import FEATURES, Entity, FeatureRegistry
from feature_store.live_writes import LiveWriter
from feature_store.online_read import READ_SCRIPT, ReadPlan, assemble
from feature_store.cluster_read import ClusterRead
from feature_store.redis_client import ConnectionSpec, RedisClient, translate_errors
from feature_store.redis_layout import KeyLayout
from feature_store.settings import EventSettings, FeatureStoreSettings, Settings


class OnlineStore(ABC):
    """Serving-time feature reads and the two layers' writes."""

    @abstractmethod
    def get_features(self, entity: Entity | str, ids: Sequence[str], names: Sequence[str],
                     now: float | None = None) -> dict[str, np.ndarray]:
        """One typed column per name, aligned with `ids`; defaults where an entity has no value.

        `now` (epoch seconds, default the clock) anchors sliding windows."""

    @abstractmethod
    def publish_batch_view(self, entity: Entity | str, watermark: datetime) -> AbstractContextManager[BatchViewWriter]:
        """Context manager yielding a picklable row writer; commits atomically on success."""

    @abstractmethod
    def live_writer(self) -> LiveWriter:
        """A writer of live (stream) events; one per worker."""

    @abstractmethod
    def attribution(self) -> AttributionStore:
        """The attributed counts (impressions, credited outcomes, position bias, debiased CTR)."""


class RedisOnlineStore(OnlineStore):
    """`OnlineStore` on one Redis server or a Redis Cluster (`redis+cluster://`, `cluster_read`)."""

    def __init__(self, spec: ConnectionSpec, config: FeatureStoreSettings | None = None,
                 registry: FeatureRegistry = FEATURES, events: EventSettings | None = None) -> None:
        self.spec = spec
        self.config = config or FeatureStoreSettings()
        self.events = events or EventSettings()
        self.registry = registry
        self.layout = KeyLayout(spec.key_prefix)
        self._client: RedisClient | None = None
        self._cluster_read: ClusterRead | None = None
        self._plans: dict[tuple[Entity, tuple[str, ...]], ReadPlan] = {}

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None,
                      registry: FeatureRegistry = FEATURES) -> "RedisOnlineStore":
        return cls(ConnectionSpec.from_settings(settings, url), settings.feature_store, registry, settings.events)

    @property
    def client(self) -> RedisClient:
        """The store's client, made on first use."""
        if self._client is None:
            self._client = self.spec.client()
            self._read = self._client.register_script(READ_SCRIPT)
            if isinstance(self._client, RedisCluster):
                with translate_errors(self.spec, "loading the read script"):
                    self._cluster_read = ClusterRead(self._client, self.layout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = self._cluster_read = None

    def get_features(self, entity: Entity | str, ids: Sequence[str], names: Sequence[str],
                     now: float | None = None) -> dict[str, np.ndarray]:
        plan = self._plan(Entity(entity), names)
        ids = [str(i) for i in ids]
        now_ms = int((time.time() if now is None else now) * 1000)
        client = self.client
        with translate_errors(self.spec, f"reading {len(names)} {entity} features for {len(ids)} ids"):
            if self._cluster_read is not None:
                reply = self._cluster_read.read(plan, ids, now_ms)
            else:
                reply = self._read(args=plan.script_args(self.spec.key_prefix, ids, now_ms), client=client)
        return assemble(plan, reply, len(ids))

    def _plan(self, entity: Entity, names: Sequence[str]) -> ReadPlan:
        key = (entity, tuple(names))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = ReadPlan.build(self.registry, entity, names)
        return plan

    @contextmanager
    def publish_batch_view(self, entity: Entity | str, watermark: datetime) -> Iterator[BatchViewWriter]:
        entity = Entity(entity)
        features = self.registry.batch_features(entity)
        publish = BatchViewPublish(self.client, self.spec, entity, features, watermark,
                                   self.config.batch_grace_s, self.config.write_batch_size)
        self.collect_garbage(entity)
        writer = publish.begin()
        try:
            yield writer
        except BaseException:
            publish.abort()
            raise
        publish.commit()

    def batch_version(self, entity: Entity | str) -> tuple[str | None, int | None]:
        """The live batch version of `entity` and its watermark (epoch ms), or (None, None)."""
        with translate_errors(self.spec, "reading the batch pointer"):
            version = self.client.get(self.layout.pointer(Entity(entity)))
            if version is None:
                return None, None
            wm = self.client.hget(self.layout.meta(Entity(entity), version.decode()), "wm")
        return version.decode(), int(wm) if wm is not None else None

    def collect_garbage(self, entity: Entity | str) -> list[str]:
        """Delete batch versions past their grace period and abandoned publishes; returns them."""
        with translate_errors(self.spec, "collecting old batch versions"):
            return collect_garbage(self.client, self.layout, Entity(entity), self.config.staging_max_age_s)

    def live_writer(self) -> LiveWriter:
        return LiveWriter(self.spec, self.config.dedup_ttl_s, self.events.max_future_skew_s,
                          self.config.write_batch_size, self.registry, categories_of=self._item_categories,
                          server_impression_ttl_s=self.config.server_impression_dedup_ttl_s)

    def attribution(self) -> RedisAttributionStore:
        return RedisAttributionStore(self.spec, self.config.dedup_ttl_s, self.events.max_future_skew_s,
                                     server_impression_ttl_s=self.config.server_impression_dedup_ttl_s)

    def _item_categories(self, item_ids: Sequence[str]) -> Sequence[Sequence[str]]:
        if "categories" not in self.registry.names(Entity.ITEM):
            return [() for _ in item_ids]
        return list(self.get_features(Entity.ITEM, item_ids, ["categories"])["categories"])
