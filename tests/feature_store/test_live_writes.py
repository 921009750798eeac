"""Speed-layer writes and the lambda merge, against a real Redis."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import redis

from feature_store.definitions import (
    POSITIVE, DType, Entity, FeatureDef, FeatureRegistry, Kind, Source, smoothed_ctr,
)
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import EventSettings, FeatureStoreSettings, Settings
from services.recommend.impressions import impression_event_id
from tests.feature_store.helpers import WM, event, item_row, user_row

NOW = (WM + timedelta(minutes=50)).timestamp()
CATEGORIES = {"i1": ["Drama", "War"], "i2": ["Comedy"], "i3": ["Drama"]}


@pytest.fixture
def store(settings: Settings, redis_client: redis.Redis) -> Iterator[RedisOnlineStore]:
    store = RedisOnlineStore.from_settings(settings)
    yield store
    store.close()


def _stream(minutes_after_wm: list[tuple[str, str, str, float]]) -> list:
    return [event(f"e{k}", user, item, kind, minutes, 5.0 if kind == "rating" else None)
            for k, (user, item, kind, minutes) in enumerate(minutes_after_wm)]


EVENTS = _stream([
    ("u1", "i1", "impression", 1), ("u1", "i1", "click", 2), ("u1", "i2", "impression", 3),
    ("u1", "i2", "rating", 4), ("u2", "i1", "impression", 45), ("u2", "i1", "click", 46),
    ("u1", "i3", "click", -30),  # before the watermark: the batch view already has it
])


def test_replaying_the_same_events_leaves_everything_unchanged(store: RedisOnlineStore) -> None:
    writer = store.live_writer()
    first = writer.write(EVENTS, CATEGORIES, now=NOW)
    before = {e: store.get_features(e, ids, store.registry.names(e), now=NOW)
              for e, ids in (("item", ["i1", "i2", "i3"]), ("user", ["u1", "u2"]), ("global", ["_"]))}
    replay = writer.write(EVENTS + EVENTS[:3], CATEGORIES, now=NOW)
    after = {e: store.get_features(e, ids, store.registry.names(e), now=NOW)
             for e, ids in (("item", ["i1", "i2", "i3"]), ("user", ["u1", "u2"]), ("global", ["_"]))}
    assert (first.applied, first.duplicates) == (7, 0)
    assert (replay.applied, replay.duplicates) == (0, 10)
    for entity, columns in before.items():
        for name, column in columns.items():
            assert after[entity][name].tolist() == column.tolist(), (entity, name)
    assert after["item"]["clicks_1h"].tolist() == [2, 0, 0] and after["item"]["clicks_24h"].tolist() == [2, 0, 1]
    writer.close()


def test_count_merge_is_batch_up_to_watermark_plus_stream_after(store: RedisOnlineStore) -> None:
    with store.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row("i1", popularity_all=100), item_row("i3", popularity_all=5)])
    store.live_writer().write(EVENTS, CATEGORIES, now=NOW)
    got = store.get_features("item", ["i1", "i2", "i3", "i4"], ["popularity_all"], now=NOW)["popularity_all"]
    # i1: 2 clicks after wm; i2: a 5-star rating; i3's click is before the watermark, counted by batch only
    assert list(got) == [102, 1, 5, 0]


def test_sequence_merge_puts_stream_after_watermark_first_deduped_and_capped(store: RedisOnlineStore) -> None:
    history = [f"h{k}" for k in range(60)]
    with store.publish_batch_view(Entity.USER, WM) as write:
        write([user_row("u1", recent_items=["i2", *history])])
    store.live_writer().write(EVENTS, CATEGORIES, now=NOW)
    merged = store.get_features("user", ["u1", "u2", "u9"], ["recent_items"], now=NOW)["recent_items"]
    assert merged[0][:3] == ["i2", "i1", "h0"]  # newest stream first; i2 deduped; i3 (< wm) not from stream
    assert len(merged[0]) == 50 and "i3" not in merged[0]
    assert merged[1] == ["i1"] and merged[2] == []


def test_latest_value_prefers_the_fresher_source(store: RedisOnlineStore) -> None:
    with store.publish_batch_view(Entity.USER, WM) as write:
        write([user_row("u1", last_category="Horror"), user_row("u3", last_category="Western")])
    store.live_writer().write(_stream([("u1", "i2", "click", 5), ("u3", "i1", "click", -10)]), CATEGORIES, now=NOW)
    got = store.get_features("user", ["u1", "u3", "u9"], ["last_category"], now=NOW)["last_category"]
    assert list(got) == ["Comedy", "Western", ""]  # u3's live value predates the watermark


def test_windowed_counts_ratio_and_trending(store: RedisOnlineStore) -> None:
    store.live_writer().write(EVENTS, CATEGORIES, now=NOW)
    later = NOW + 40 * 60  # 90 min after wm: the first events left the 1h window, not the 24h one
    got = store.get_features("item", ["i1"], ["clicks_1h", "clicks_24h", "impressions_24h", "ctr_24h"], now=later)
    assert (got["clicks_1h"][0], got["clicks_24h"][0], got["impressions_24h"][0]) == (1, 2, 2)
    assert got["ctr_24h"][0] == pytest.approx(smoothed_ctr(2, 2))
    trending = store.get_features("global", ["_"], ["trending"], now=NOW)["trending"][0]
    assert trending[0] == "i1" and sorted(trending) == ["i1", "i2", "i3"]  # i1: 2 positives, the others 1
    assert store.get_features("global", ["_"], ["trending"], now=NOW + 8 * 3600)["trending"][0] == []


def test_category_features_look_categories_up_in_the_item_batch_view(store: RedisOnlineStore) -> None:
    with store.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row("i1", categories=["Drama", "War"]), item_row("i2", categories=["Comedy"])])
    store.live_writer().write(EVENTS, now=NOW)  # no categories given: looked up
    got = store.get_features("user", ["u1"], ["recent_categories", "last_category"], now=NOW)
    assert got["recent_categories"][0][0] in ("Drama", "War", "Comedy")
    assert set(got["recent_categories"][0]) == {"Drama", "War", "Comedy"}
    assert got["last_category"][0] == "Comedy"


def test_live_values_expire_and_too_old_events_are_dropped(settings: Settings, redis_client: redis.Redis) -> None:
    short = FeatureRegistry((
        FeatureDef(Entity.USER, "recent", DType.SEQUENCE, Source.STREAM, Kind.SEQUENCE, events=POSITIVE,
                   cap=3, ttl=timedelta(milliseconds=300)),
    ))
    store = RedisOnlineStore(ConnectionSpec.from_settings(settings), FeatureStoreSettings(dedup_ttl_s=0.3), short,
                             EventSettings(max_future_skew_s=0))  # markers live dedup_ttl_s + the skew
    writer = store.live_writer()
    now = datetime.now(timezone.utc)
    events = [event(f"x{k}", "u1", f"i{k}", "click", 0).model_copy(update={"ts": now}) for k in range(5)]
    assert writer.write(events).applied == 5
    # Waited for, not slept on: a busy machine may take longer than the TTL between two reads.
    # Every key it wrote, markers included, expires; one without a TTL would stay and fail this.
    deadline = time.monotonic() + 60
    while redis_client.keys("*"):
        assert time.monotonic() < deadline, f"never expired: {redis_client.keys('*')}"
        time.sleep(0.05)
    assert store.get_features("user", ["u1"], ["recent"])["recent"][0] == []
    assert writer.write(events).too_late == 5  # older than the replay window: left to the batch layer
    writer.close()
    store.close()


def test_old_count_buckets_are_trimmed(store: RedisOnlineStore, redis_client: redis.Redis) -> None:
    writer = store.live_writer()
    for day in range(10):  # 10 days of clicks, written as they happen
        moment = WM + timedelta(days=day)
        clicks = [event(f"d{day}-{k}", "u1", "i1", "click", day * 1440 + k) for k in range(3)]
        writer.write(clicks, CATEGORIES, now=moment.timestamp() + 600)
    fields = [f.decode() for f in redis_client.hkeys(store.layout.live_hash(Entity.ITEM, "i1"))]
    assert sorted({f.split(":")[0] for f in fields}) == ["clicks_1h", "clicks_24h", "clicks_all", "popularity_all"]
    assert len([f for f in fields if f.startswith("popularity_all:")]) <= 8  # 7-day retention, hourly
    assert len([f for f in fields if f.startswith("clicks_24h:")]) <= 2


def test_week_long_counts_agree_between_sparse_and_dense_live_hashes(
    store: RedisOnlineStore, redis_client: redis.Redis
) -> None:
    """A count over a week of hourly buckets scans a sparse item's few buckets and asks a busy
    item's hash for each bucket: both must count exactly the buckets in range."""
    writer = store.live_writer()
    sparse_hours = {0, 100, 167}
    for hour in range(168):
        clicks = [event(f"dense-{hour}", "u1", "dense", "click", hour * 60 + 5)]
        if hour in sparse_hours:
            clicks.append(event(f"sparse-{hour}", "u1", "sparse", "click", hour * 60 + 5))
        writer.write(clicks, {"dense": ["Drama"], "sparse": ["Drama"]}, now=(WM + timedelta(minutes=hour * 60 + 6)).timestamp())
    now = (WM + timedelta(minutes=167 * 60 + 10)).timestamp()
    assert redis_client.hlen(store.layout.live_hash(Entity.ITEM, "dense")) > 168  # asked bucket by bucket
    assert redis_client.hlen(store.layout.live_hash(Entity.ITEM, "sparse")) < 20  # scanned

    counts = store.get_features("item", ["dense", "sparse"], ["popularity_all", "clicks_all"], now=now)
    assert counts["popularity_all"].tolist() == [168, 3] and counts["clicks_all"].tolist() == [168, 3]

    watermark = WM + timedelta(hours=150)  # the batch view counts everything before it
    with store.publish_batch_view(Entity.ITEM, watermark) as write:
        write([item_row("dense", popularity_all=500), item_row("sparse", popularity_all=1000)])
    merged = store.get_features("item", ["dense", "sparse"], ["popularity_all"], now=now)["popularity_all"]
    assert merged.tolist() == [500 + 18, 1000 + 1]  # live buckets from hour 150 on only
    writer.close()


def test_a_far_future_event_pins_nothing_and_no_ttl_comes_from_an_event_time(
    store: RedisOnlineStore, redis_client: redis.Redis, settings: Settings
) -> None:
    writer = store.live_writer()
    far = event("far", "u1", "i9", "click", 0).model_copy(update={"ts": datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)})
    skew = timedelta(seconds=settings.events.max_future_skew_s)
    soon = event("soon", "u2", "i3", "click", 0).model_copy(update={"ts": datetime.fromtimestamp(NOW, timezone.utc) + skew / 2})
    first = writer.write([far, soon], CATEGORIES, now=NOW)
    later = writer.write(_stream([("u1", "i1", "click", 51), ("u1", "i2", "click", 52)]), CATEGORIES, now=NOW + 180)
    assert (first.applied, first.in_future, later.applied) == (1, 1, 2)  # within the skew allowance: applied
    got = store.get_features("user", ["u1", "u2"], ["recent_items", "last_category", "event_count"], now=NOW + 180)
    assert got["recent_items"].tolist() == [["i2", "i1"], ["i3"]]
    assert got["last_category"].tolist() == ["Comedy", "Drama"] and got["event_count"].tolist() == [2, 1]
    assert not redis_client.exists(store.layout.seen_marker("far"))
    longest_ttl = max(f.ttl for e in Entity for f in store.registry.stream_features(e))  # type: ignore[type-var]
    bound_ms = max(longest_ttl, timedelta(seconds=store.config.dedup_ttl_s) + skew) / timedelta(milliseconds=1)
    ttls = {key.decode(): redis_client.pttl(key) for key in redis_client.keys("*")}
    assert ttls and all(0 < ttl <= bound_ms for ttl in ttls.values()), ttls
    writer.close()


def test_server_impressions_keep_shorter_replay_markers(settings: Settings, redis_client: redis.Redis) -> None:
    """The API's own impressions (ids `imp-…`) are recognised as replays for
    `server_impression_dedup_ttl_s`, not `dedup_ttl_s`: a replay within it counts nothing, one after
    it is too late (never applied, so never counted twice), and their markers expire with it."""
    config = FeatureStoreSettings(dedup_ttl_s=48 * 3600, server_impression_dedup_ttl_s=6 * 3600)
    store = RedisOnlineStore(ConnectionSpec.from_settings(settings), config, events=EventSettings(max_future_skew_s=900))
    writer = store.live_writer()
    server = event(impression_event_id("r1", "u1", 0), "u1", "i1", "impression", 49)
    client = event("c1", "u1", "i1", "impression", 49)
    assert writer.write([server, client], CATEGORIES, now=NOW).applied == 2
    replay = writer.write([server], CATEGORIES, now=NOW + 5 * 3600)  # within its 6 h: a replay
    assert (replay.applied, replay.duplicates) == (0, 1)
    assert writer.write([server], CATEGORIES, now=NOW + 6 * 3600 + 120).too_late == 1  # past it: never applied
    assert writer.write([client], CATEGORIES, now=NOW + 6 * 3600 + 120).duplicates == 1  # a client's lives 48 h
    counts = store.get_features("item", ["i1"], ["impressions_24h"], now=NOW)
    assert counts["impressions_24h"].tolist() == [2]
    layout = store.layout
    server_ttl, client_ttl = (redis_client.pttl(layout.seen_marker(e.event_id)) for e in (server, client))
    assert 6 * 3600_000 + 900_000 - 60_000 < server_ttl <= 6 * 3600_000 + 900_000
    assert 48 * 3600_000 + 900_000 - 60_000 < client_ttl <= 48 * 3600_000 + 900_000
    writer.close()
    store.close()
