"""The Redis online store against a real Redis: publish, reads, failures."""

from __future__ import annotations

import random
import socket
import threading
from typing import Iterator

import numpy as np
import pytest
import redis

from feature_store.definitions import DType, Entity, FeatureDef, FeatureRegistry, Source, UnknownFeatureError
from feature_store.errors import BatchViewError, FeatureStoreUnavailableError
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import FeatureStoreSettings, Settings
from tests.feature_store.helpers import WM, item_row

VERSIONED = FeatureRegistry((FeatureDef(Entity.ITEM, "version", DType.INT, Source.BATCH, default=-1),))


@pytest.fixture
def store(settings: Settings, redis_client: redis.Redis) -> Iterator[RedisOnlineStore]:
    store = RedisOnlineStore.from_settings(settings)
    yield store
    store.close()


def test_reads_typed_columns_with_defaults_for_missing_entities(store: RedisOnlineStore) -> None:
    with store.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row("i1", popularity_7d=7, impressions_all=19, clicks_all=5, primary_category="Drama",
                        categories=["Drama", "War"], embedding=np.arange(32) / 10)])
    names = ["popularity_7d", "ctr", "primary_category", "categories", "embedding"]
    got = store.get_features("item", ["i1", "unknown"], names)
    assert got["popularity_7d"].dtype == np.int64 and list(got["popularity_7d"]) == [7, 0]
    assert got["ctr"].dtype == np.float32 and got["ctr"][0] == pytest.approx((5 + 1) / (19 + 21))  # smoothed
    assert got["ctr"][1] == pytest.approx(1 / 21)  # no counts: the prior CTR
    assert list(got["primary_category"]) == ["Drama", ""]
    assert got["categories"][0] == ["Drama", "War"] and got["categories"][1] == []
    assert got["embedding"].shape == (2, 32) and got["embedding"][0, 5] == pytest.approx(0.5)
    assert not got["embedding"][1].any()


def test_unknown_feature_name_is_a_clear_error(store: RedisOnlineStore) -> None:
    with pytest.raises(UnknownFeatureError, match="known item features: .*popularity_all"):
        store.get_features("item", ["i1"], ["popularity_all", "populrity"])


def test_bad_row_names_row_and_column_and_publishes_nothing(store: RedisOnlineStore) -> None:
    with pytest.raises(BatchViewError, match="row 1: missing columns \\['clicks_all'\\]"):
        with store.publish_batch_view(Entity.ITEM, WM) as write:
            bad = item_row("i2")
            del bad["clicks_all"]
            write([item_row("i1", popularity_all=3), bad])
    assert store.batch_version(Entity.ITEM) == (None, None)
    assert store.client.keys("*:b:item:*") == []  # the half-written version was deleted


def test_unaligned_watermark_is_rejected(store: RedisOnlineStore) -> None:
    with pytest.raises(BatchViewError, match="not aligned"):
        with store.publish_batch_view(Entity.ITEM, WM.replace(minute=30)):
            pass


def _publish(store: RedisOnlineStore, version: int, n: int) -> None:
    with store.publish_batch_view(Entity.ITEM, WM) as write:
        write({"item_id": f"i{k}", "version": version} for k in range(n))


def test_concurrent_reader_never_sees_a_mix_of_versions_or_a_missing_entity(
        settings: Settings, redis_client: redis.Redis) -> None:
    n = 100_000
    config = FeatureStoreSettings(batch_grace_s=0, write_batch_size=2000)
    store = RedisOnlineStore(ConnectionSpec.from_settings(settings), config, VERSIONED)
    _publish(store, 1, n)
    seen: list[set[int]] = []
    stop = threading.Event()

    def poll() -> None:
        reader = RedisOnlineStore(ConnectionSpec.from_settings(settings), config, VERSIONED)
        rng = random.Random(7)
        while not stop.is_set():
            ids = [f"i{rng.randrange(n)}" for _ in range(200)] + [f"i{n - 1}"]
            seen.append(set(reader.get_features("item", ids, ["version"])["version"].tolist()))
        reader.close()

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        _publish(store, 2, n)
        _publish(store, 3, n)  # garbage-collects version 1 while the reader polls
    finally:
        stop.set()
        thread.join()
    assert seen and all(len(versions) == 1 for versions in seen), [v for v in seen if len(v) != 1][:3]
    assert -1 not in set().union(*seen)  # never a missing entity
    assert len(set().union(*seen)) >= 2  # the reader really did poll across a switch
    assert store.batch_version(Entity.ITEM)[0] == "3"
    assert redis_client.keys("*:b:item:1:*") == []  # retired past its (zero) grace, deleted
    store.close()


def test_old_version_survives_its_grace_period(settings: Settings, redis_client: redis.Redis) -> None:
    store = RedisOnlineStore(ConnectionSpec.from_settings(settings), FeatureStoreSettings(batch_grace_s=3600),
                             VERSIONED)
    _publish(store, 1, 10)
    _publish(store, 2, 10)
    _publish(store, 3, 10)
    assert len(redis_client.keys("*:b:item:1:*")) == 10
    assert redis_client.zrange(store.layout.retired(Entity.ITEM), 0, -1) == [b"1", b"2"]


def test_unreachable_redis_raises_the_typed_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    store = RedisOnlineStore(ConnectionSpec(f"redis://127.0.0.1:{port}/0", 0.2, 0.2))
    with pytest.raises(FeatureStoreUnavailableError, match="reading 1 item features"):
        store.get_features("item", ["i1"], ["ctr"])


def test_silent_redis_times_out_with_the_typed_error() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = RedisOnlineStore(ConnectionSpec(f"redis://127.0.0.1:{port}/0", 0.2, 0.2))
        with pytest.raises(FeatureStoreUnavailableError, match="socket timeout 0.2s"):
            store.get_features("item", ["i1"], ["ctr"])
