"""Folding the old one-key-per-(item, position) counts into the item hashes, on a real Redis: the
counts read afterwards are the old ones plus the new ones, and a rerun (also after a crash between
a key's fold and its deletion) adds nothing."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import redis

from feature_store.attribution import BUCKET_MS, Dimension, Impression, Outcome, join_key
from feature_store.attribution_store import RETENTION_MS, RedisAttributionStore
from feature_store.attribution_upgrade import fold_item_positions, index_policy_arms
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.settings import Settings


def _rows(store: RedisAttributionStore) -> Counter[tuple[str, int, str]]:
    return Counter({(r.key, r.bucket_ms, r.measure): r.value for r in store.scan_counts(Dimension.ITEM_POSITION)})


def test_old_item_position_keys_fold_into_the_item_hash_once(settings: Settings, redis_client: redis.Redis) -> None:
    check_fold(ConnectionSpec(settings.redis.url or ""))


def check_fold(spec: ConnectionSpec) -> None:
    """The fold on the Redis (or Redis Cluster) of `spec`, which holds no attribution keys yet."""
    redis_client = spec.client()
    store = RedisAttributionStore(spec, dedup_ttl_s=86_400, max_future_skew_s=900)
    now = int(time.time() * 1000)
    bucket = now - now % BUCKET_MS
    for n in range(6):  # written by the new stream job: a at positions 0 and 1
        shown = Impression(f"imp{n}", "u", "a", now - 1000, f"r{n}", n % 2, "greedy", None, None)
        store.record_impression(shown, now)
        if n < 2:
            store.record_credit(shown, Outcome(f"c{n}", "u", "a", "click", now - 500, f"r{n}"), now)
    old = {  # written by the old stream job: keys of their own
        ("a", "1"): {f"impression:{bucket}": 3, f"click:{bucket}": 1, f"impression:{bucket - BUCKET_MS}": 2},
        ("b|x%", "2"): {f"impression:{bucket}": 4},
    }
    layout = KeyLayout(spec.key_prefix)
    for (item, position), fields in old.items():
        key = layout.attribution_counts(Dimension.ITEM_POSITION, join_key(item, position))
        redis_client.hset(key, mapping=fields)
        redis_client.pexpire(key, RETENTION_MS)
        redis_client.zadd(layout.attribution_positions(), {position: bucket})  # the old job listed it too
    expected = _rows(store) + Counter({(join_key(item, position), int(field.split(":")[1]), field.split(":")[0]): value
                                       for (item, position), fields in old.items() for field, value in fields.items()})
    examined_before = store.examined_counts(["a", "b|x%"], 0, now + BUCKET_MS).examined

    assert fold_item_positions(spec) == 2
    assert _rows(store) == expected
    assert not list(redis_client.scan_iter(layout.attribution_counts_pattern(Dimension.ITEM_POSITION)))
    examined = store.examined_counts(["a", "b|x%"], 0, now + BUCKET_MS).examined
    theta = store.position_bias(0, now + BUCKET_MS)
    np.testing.assert_allclose(examined, [examined_before[0] + theta["1"] * 5, theta["2"] * 4])
    assert 0 < redis_client.pttl(layout.attribution_counts(Dimension.ITEM, "b|x%")) <= RETENTION_MS

    # A crash after a fold, before its key was deleted: the rerun finds the marker and only deletes.
    key = layout.attribution_counts(Dimension.ITEM_POSITION, join_key("a", "1"))
    redis_client.hset(key, mapping=old[("a", "1")])
    assert fold_item_positions(spec) == 0
    assert _rows(store) == expected and not redis_client.exists(key)
    store.close()
    redis_client.close()


def test_policy_arm_counts_are_read_from_their_index_and_the_upgrade_indexes_older_keys(
    settings: Settings, redis_client: redis.Redis
) -> None:
    spec = ConnectionSpec(settings.redis.url or "")
    store = RedisAttributionStore(spec, dedup_ttl_s=86_400, max_future_skew_s=900)
    layout = KeyLayout(spec.key_prefix)
    now = int(time.time() * 1000)
    bucket = now - now % BUCKET_MS
    old_key = layout.attribution_counts(Dimension.POLICY_ARM, join_key("greedy", "exp:A"))
    redis_client.hset(old_key, mapping={f"impression:{bucket - BUCKET_MS}": 5, f"impression:{bucket}": 2})
    old_rows = {(join_key("greedy", "exp:A"), bucket - BUCKET_MS, "impression"): 5, (join_key("greedy", "exp:A"), bucket, "impression"): 2}

    def rows() -> dict[tuple[str, int, str], int]:
        return {(r.key, r.bucket_ms, r.measure): r.value for r in store.scan_counts(Dimension.POLICY_ARM)}

    assert rows() == old_rows  # no index yet: the keys are scanned
    store.record_impression(Impression("imp1", "u", "i", now - 1000, "r1", 0, "eps|v2", None, "exp:B"), now)
    new_rows = {(join_key("eps|v2", "exp:B"), bucket, "impression"): 1}
    assert rows() == new_rows  # the index exists: only indexed keys are read
    assert index_policy_arms(spec) == 2 and index_policy_arms(spec) == 2  # idempotent
    assert rows() == {**old_rows, **new_rows}
    index = dict(redis_client.zrange(layout.attribution_policy_arms(), 0, -1, withscores=True))
    assert index == {join_key("greedy", "exp:A").encode(): bucket, join_key("eps|v2", "exp:B").encode(): bucket}
    store.close()
