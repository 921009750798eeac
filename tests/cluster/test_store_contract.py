"""The feature store's writes, one contract on a single redis-server and on a 3-master Redis Cluster.

Values are read back key by key through the URL's own client (a cluster client asks the master
that owns each key's slot), so a script that wrote a key on a node not owning its slot leaves a key
no reader can find, and fails here against the planted ground truth.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest

from feature_store.definitions import (
    ALL_EVENTS, GLOBAL_ID, POSITIVE, DType, Entity, FeatureDef, FeatureRegistry, Kind, Source,
)
from feature_store.live_writes import LiveWriter
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event
from tests.feature_store.helpers import WM, event

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
