"""The feature store's writes, one contract on a single redis-server and on a 3-master Redis Cluster.

Values are read back key by key through the URL's own client (a cluster client asks the master
that owns each key's slot), so a script that wrote a key on a node not owning its slot leaves a key
no reader can find, and fails here against the planted ground truth.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from feature_store.attribution import BUCKET_MS, Dimension, join_key, reference_counts
from feature_store.attribution_store import RedisAttributionStore
from feature_store.definitions import (
    ALL_EVENTS, GLOBAL_ID, POSITIVE, DType, Entity, FeatureDef, FeatureRegistry, Kind, Source,
)
from feature_store.linucb_store import RedisLinUcbStore
from feature_store.live_writes import LiveWriter
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event
from feature_store.settings import Settings
from tests.feature_store.helpers import WM, event, item_row, user_row
from tests.feature_store.test_attribution_store import (
    WINDOW_MS, apply_log, check_each_event_is_decided_once, planted_log, stored,
)
from tests.feature_store.test_attribution_upgrade import check_fold

NOW = (WM + timedelta(minutes=59)).timestamp()
REGISTRY = FeatureRegistry((
    FeatureDef(Entity.USER, "events", DType.INT, Source.STREAM, Kind.COUNT, events=ALL_EVENTS,
               ttl=timedelta(days=1)),
    FeatureDef(Entity.USER, "recent", DType.SEQUENCE, Source.STREAM, Kind.SEQUENCE, events=POSITIVE, cap=50,
               ttl=timedelta(days=1)),
    FeatureDef(Entity.GLOBAL, "top", DType.SEQUENCE, Source.STREAM, Kind.TOP_K, events=POSITIVE, cap=100,
               ttl=timedelta(days=1)),
))


def _events(n: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    return [event(f"e{k}", f"u{rng.randrange(25)}", f"i{rng.randrange(30)}", rng.choice(["impression", "click"]),
                  k * 50 / n) for k in range(n)]


def _truth(events: list[Event]) -> tuple[Counter[str], dict[str, list[str]], Counter[str]]:
    counts = Counter(e.user_id for e in events)
    clicks = sorted((e for e in events if e.type == "click"), key=lambda e: e.ts)
    recent: dict[str, list[str]] = {}
    for e in reversed(clicks):
        if e.item_id not in recent.setdefault(e.user_id, []):
            recent[e.user_id].append(e.item_id)
    return counts, recent, Counter(e.item_id for e in clicks)


def _stored(spec: ConnectionSpec, users: set[str]) -> tuple[Counter[str], dict[str, list[str]], Counter[str]]:
    layout, client = KeyLayout(spec.key_prefix), spec.client()
    counts: Counter[str] = Counter()
    recent: dict[str, list[str]] = {}
    for user in users:
        fields = client.hgetall(layout.live_hash(Entity.USER, user))
        counts[user] = sum(int(v) for f, v in fields.items() if f.startswith(b"events:"))
        members = client.zrevrange(layout.live_zset(Entity.USER, user, "recent"), 0, -1)
        if members:
            recent[user] = [m.decode() for m in members]
    top = client.zrange(layout.live_zset(Entity.GLOBAL, GLOBAL_ID, "top"), 0, -1, withscores=True)
    client.close()
    return counts, recent, Counter({m.decode(): int(s) for m, s in top})


def test_live_writes_land_where_readers_find_them_and_replays_change_nothing(redis_url: str) -> None:
    spec = ConnectionSpec(redis_url)
    events = _events(300)
    writer = LiveWriter(spec, dedup_ttl_s=3600, max_future_skew_s=60, batch_size=64, registry=REGISTRY)
    first = writer.write(events[:200], now=NOW)
    assert (first.applied, first.duplicates) == (200, 0)
    replay = writer.write(events, now=NOW)  # a stream replayed from an older offset
    assert (replay.applied, replay.duplicates) == (100, 200)
    writer.close()
    assert _stored(spec, {e.user_id for e in events}) == _truth(events)


def test_published_batch_views_and_live_writes_merge_on_read(redis_url: str, settings: Settings) -> None:
    store = RedisOnlineStore(ConnectionSpec(redis_url), settings.feature_store, events=settings.events)
    with store.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row(f"i{k}", popularity_all=100 * k, categories=[f"c{k % 3}"]) for k in range(30)])
    with store.publish_batch_view(Entity.USER, WM) as write:
        write([user_row("u1", recent_items=["h1", "h2"], last_category="Old")])
    clicks = [event(f"c{k}", "u1", f"i{k}", "click", 1 + k) for k in range(5)]
    assert store.live_writer().write(clicks, now=NOW).applied == 5
    ids = [f"i{k}" for k in range(30)] + ["missing"]
    items = store.get_features("item", ids, ["popularity_all", "categories", "clicks_24h"], now=NOW)
    assert items["popularity_all"].tolist() == [100 * k + (k < 5) for k in range(30)] + [0]
    assert items["categories"].tolist() == [[f"c{k % 3}"] for k in range(30)] + [[]]
    assert items["clicks_24h"].tolist() == [int(k < 5) for k in range(30)] + [0]
    user = store.get_features("user", ["u1"], ["recent_items", "last_category"], now=NOW)
    assert user["recent_items"][0] == ["i4", "i3", "i2", "i1", "i0", "h1", "h2"]
    assert user["last_category"][0] == "c1"  # i4's category, written after the watermark
    with store.publish_batch_view(Entity.ITEM, WM + timedelta(hours=1)) as write:
        write([item_row("i0", popularity_all=7)])
    assert store.batch_version("item")[0] == "2"
    after = store.get_features("item", ["i0", "i1"], ["popularity_all"], now=NOW + 3600)["popularity_all"]
    assert after.tolist() == [7, 0]  # the new version only: i1 is not in it and its click predates its watermark
    store.close()


def test_linucb_updates_are_applied_once_per_update_id(redis_url: str) -> None:
    store = RedisLinUcbStore(ConnectionSpec(redis_url), dim=4, ridge=2.0)
    rng = np.random.default_rng(3)
    updates = [(f"up{k}", f"i{k % 6}", rng.normal(size=4), float(k % 2)) for k in range(40)]
    assert all(store.update(*update) for update in updates)
    assert not any(store.update(*update) for update in updates[::3])  # replays
    items = [f"i{k}" for k in range(7)]
    A_inv, b = store.read(items)
    for n, item in enumerate(items):
        mine = [(x, r) for _, i, x, r in updates if i == item]
        assert np.allclose(A_inv[n], np.linalg.inv(2.0 * np.eye(4) + sum((np.outer(x, x) for x, _ in mine), np.zeros((4, 4)))))
        assert np.allclose(b[n], sum((r * x for x, r in mine), np.zeros(4)))
    store.close()


def test_attributed_counts_equal_the_rule_and_examined_counts_agree(redis_url: str) -> None:
    store = RedisAttributionStore(ConnectionSpec(redis_url), dedup_ttl_s=2 * 86400, max_future_skew_s=900,
                                  recent_outcomes=5)
    events = planted_log(11, datetime.now(timezone.utc) - timedelta(hours=4))
    apply_log(store, events)
    apply_log(store, list(reversed(events)))  # a replay, in another order
    assert stored(store) == reference_counts(events, WINDOW_MS)
    assert len(store.recent_outcomes(100)) == 5
    items = ["i0", "i:1", "i{2}", "i%3", "i|4", "i5", "never"]
    got = store.examined_counts(items, 0, int(time.time() * 1000) + BUCKET_MS)
    theta = store.position_bias(0, int(time.time() * 1000) + BUCKET_MS)
    counts = stored(store)
    for n, item in enumerate(items):  # E_i = Σ_k θ_k · impressions_{i,k}, c_i = attributed clicks
        shown = sum(theta[position] * value for (dimension, key, _, measure), value in counts.items()
                    for position in theta if dimension == Dimension.ITEM_POSITION
                    and key == join_key(item, position) and measure == "impression")
        clicks = sum(value for (dimension, key, _, measure), value in counts.items()
                     if dimension == Dimension.ITEM and key == item and measure == "click")
        assert (got.examined[n], got.clicks[n]) == (pytest.approx(shown), clicks), item
    store.close()


def test_each_attribution_event_is_decided_once(redis_url: str) -> None:
    check_each_event_is_decided_once(ConnectionSpec(redis_url))


def test_old_item_position_keys_fold_into_the_item_hashes(redis_url: str) -> None:
    check_fold(ConnectionSpec(redis_url))
