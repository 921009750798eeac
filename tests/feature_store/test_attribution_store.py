"""The Redis store of attributed counts, against a real Redis: counts equal the rule's oracle
(`reference_counts`) and stay equal on replay, windows, TTLs from trusted times only, escaped
ids, and the position-bias reads against an independent computation."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import redis

from feature_store.attribution import (
    BUCKET_MS, MAX_COUNTED_POSITION, Dimension, Impression, Outcome, attribute, is_outcome, join_key, reference_counts,
)
from feature_store.attribution_store import (
    RETENTION_MS, LateImpressionRecord, Miss, RecordResult, RedisAttributionStore,
)
from feature_store.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from services.recommend.impressions import impression_event_id

WINDOW_MS = 30 * 60_000
SKEW_S = 900.0


@pytest.fixture
def store(settings: Settings, redis_client: redis.Redis) -> Iterator[RedisAttributionStore]:
    store = RedisAttributionStore(ConnectionSpec(settings.redis.url or ""), dedup_ttl_s=2 * 86400,
                                  max_future_skew_s=SKEW_S, recent_outcomes=5)
    yield store
    store.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def planted_log(seed: int, start: datetime, n: int = 400) -> list[Event]:
    """Impressions and outcomes of 4 users x 6 items over 3 hours, some with request ids."""
    rng = random.Random(seed)
    events: list[Event] = []
    for k in range(n):
        kind = rng.choice(["impression"] * 3 + ["click", "click", "purchase", "like", "rating"])
        context: dict[str, object] = {}
        if kind == "impression":
            context = {"request_id": f"r{rng.randrange(40)}", "position": rng.randrange(4),
                       "policy": rng.choice(["greedy", "ucb|v1"]), "arm": rng.choice(["A", "B", None])}
        elif rng.random() < 0.6:
            context = {"request_id": f"r{rng.randrange(40)}"}
        events.append(Event.model_validate({
            "event_id": f"e{k}", "user_id": f"u{rng.randrange(4)}", "item_id": rng.choice(["i0", "i:1", "i{2}", "i%3", "i|4", "i5"]),
            "type": kind, "value": 3.0 if kind == "rating" else None,
            "ts": (start + timedelta(seconds=rng.randrange(3 * 3600))).isoformat(), "context": context,
        }))
    return events + events[:20]  # replayed duplicates


def apply_log(store: RedisAttributionStore, events: list[Event]) -> None:
    """Drive the store as the stream job does: impressions first, then each outcome by the rule."""
    impressions = [Impression.of(e) for e in events if e.type == EventType.IMPRESSION]
    for impression in impressions:
        store.record_impression(impression)
    for event in (e for e in events if is_outcome(e)):
        outcome = Outcome.of(event)
        target = attribute(outcome, impressions, WINDOW_MS)
        if target is None:
            store.record_miss(outcome, Miss.UNATTRIBUTED)
        else:
            store.record_credit(target, outcome)


def stored(store: RedisAttributionStore) -> dict[tuple[str, str, int, str], int]:
    rows = [row for dimension in Dimension.ALL for row in store.scan_counts(dimension)]
    return {(r.dimension, r.key, r.bucket_ms, r.measure): r.value for r in rows}


def test_counts_equal_the_rule_and_a_replay_adds_nothing(store: RedisAttributionStore) -> None:
    start = datetime.now(timezone.utc) - timedelta(hours=4)
    events = planted_log(7, start)
    apply_log(store, events)
    expected = reference_counts(events, WINDOW_MS)
    assert stored(store) == expected
    assert any(key[1] == join_key("i|4", "2") for key in expected), "escaped ids are part of the check"
    apply_log(store, list(reversed(events)))  # a replay, in another order
    assert stored(store) == expected
    unattributed = sum(1 for e in {e.event_id: e for e in events if is_outcome(e)}.values()
                       if attribute(Outcome.of(e), [Impression.of(i) for i in events if i.type == "impression"], WINDOW_MS) is None)
    misses = store.misses(0, now_ms() + BUCKET_MS)
    assert sum(n for name, n in misses.items() if name.startswith("unattributed:")) == unattributed


def test_counts_sum_the_buckets_of_a_window(store: RedisAttributionStore) -> None:
    now = now_ms()
    hour = now - now % BUCKET_MS
    for n, age_h in enumerate([0, 0, 1, 5, 30]):
        store.record_impression(Impression(f"e{n}", "u", "i1", hour - age_h * BUCKET_MS + 1, None, 0, None, None, None))
    assert store.window_counts(Dimension.ITEM, "i1", "1h") == {"impression": 2}
    assert store.window_counts(Dimension.ITEM, "i1", "24h") == {"impression": 4}
    assert store.window_counts(Dimension.ITEM, "i1", "7d") == {"impression": 5}
    assert store.counts(Dimension.ITEM, "i1", hour - BUCKET_MS, hour) == {"impression": 1}
    with pytest.raises(ValueError, match="unknown window '2h'"):
        store.window_counts(Dimension.ITEM, "i1", "2h")


def test_every_key_expires_from_a_trusted_time(store: RedisAttributionStore, redis_client: redis.Redis) -> None:
    real = now_ms()
    now = real - real % BUCKET_MS + BUCKET_MS - 60_000  # a minute before the next hour
    ahead = Impression("ahead", "u", "i1", now + 600_000, "r", 1, None, None, None)  # next hour, within the skew
    far = Impression("far", "u", "i2", now + 10 * 86_400_000, "r", 1, None, None, None)
    old = Impression("old", "u", "i3", now - 3 * 86_400_000, "r", 1, None, None, None)
    assert store.record_impression(ahead, now_ms=now) is RecordResult.APPLIED
    assert store.record_credit(ahead, Outcome("c", "u", "i1", "click", ahead.ts_ms, "r"), now_ms=now) is RecordResult.APPLIED
    assert store.record_impression(far, now_ms=now) is RecordResult.IN_FUTURE
    assert store.record_impression(old, now_ms=now) is RecordResult.TOO_OLD
    keys = list(redis_client.scan_iter("recsys:a:*"))
    # (item, position) counts are in the item hash; the click's decision has a marker of its own.
    assert len(keys) == 9 and not any(b"i2" in k or b"i3" in k for k in keys)
    for key in keys:
        ttl = redis_client.pttl(key)
        if key.startswith((b"recsys:a:seen:", b"recsys:a:credit:")):
            assert 0 < ttl <= (2 * 86400 + SKEW_S) * 1000, (key, ttl)
        else:  # RETENTION from now, not from the bucket an hour ahead
            assert RETENTION_MS - 120_000 < ttl <= RETENTION_MS, (key, ttl)  # the script's clock is `now`


def test_buckets_older_than_the_retention_are_trimmed(settings: Settings, redis_client: redis.Redis) -> None:
    store = RedisAttributionStore(ConnectionSpec(settings.redis.url or ""), dedup_ttl_s=30 * 86400, max_future_skew_s=SKEW_S)
    end = now_ms()
    for day in range(12):  # one impression a day for 12 days, each written on its day
        ts = end - (11 - day) * 86_400_000
        assert store.record_impression(Impression(f"d{day}", "u", "i1", ts, None, 0, None, None, None), now_ms=ts) is RecordResult.APPLIED
    store.close()
    fields = redis_client.hkeys("recsys:a:{item:i1}")  # the item's and its (item, position 0) counts
    buckets = sorted({int(f.split(b":")[1]) for f in fields})
    assert len(buckets) == 8 and len(fields) == 16 and buckets[0] >= end - RETENTION_MS
    assert redis_client.zcard("recsys:a:positions") == 1


def test_credit_counts_once_per_impression_and_type_and_is_recorded(store: RedisAttributionStore) -> None:
    now = now_ms()
    shown = Impression("imp", "u1", "i:1", now - 1000, "r1", 3, "ucb", "exp", "B")
    store.record_impression(shown)
    assert store.record_credit(shown, Outcome("c1", "u1", "i:1", "click", now, "r1")) is RecordResult.APPLIED
    assert store.record_credit(shown, Outcome("c2", "u1", "i:1", "click", now, "r1")) is RecordResult.DUPLICATE
    assert store.record_credit(shown, Outcome("p1", "u1", "i:1", "purchase", now, "r1")) is RecordResult.APPLIED
    assert store.window_counts(Dimension.ITEM_POSITION, join_key("i:1", "3"), "1h") == {"impression": 1, "click": 1, "purchase": 1}
    assert store.window_counts(Dimension.POLICY_ARM, join_key("ucb", "B"), "1h") == {"impression": 1, "click": 1, "purchase": 1}
    recent = store.recent_outcomes()
    assert [(r["outcome_id"], r["impression_id"], r["position"], r["arm"]) for r in recent] == [
        ("p1", "imp", 3, "B"), ("c1", "imp", 3, "B")]
    for n in range(10):
        store.record_credit(shown, Outcome(f"l{n}", "u1", "i:1", f"like{n}", now, None))
    assert len(store.recent_outcomes()) == 5  # capped
    late = Outcome("late", "u1", "i:1", "click", now - 2 * BUCKET_MS, None)
    store.record_miss(late, Miss.LATE)
    store.record_miss(late, Miss.LATE)
    assert store.misses(now - 3 * BUCKET_MS, now + BUCKET_MS) == {"late:click": 1}


def check_each_event_is_decided_once(spec: ConnectionSpec) -> None:
    """An outcome is credited, unattributed or late once, whichever record of it comes first; an
    impression counted or dropped as too late once (a restart of the stream job may decide an event
    again, otherwise). Also on a Redis Cluster, where a record's parts lie in several slots."""
    store = RedisAttributionStore(spec, dedup_ttl_s=2 * 86400, max_future_skew_s=SKEW_S)
    now = now_ms()
    first = Impression("imp1", "u", "i:1", now - 60_000, None, 0, "ucb", None, "A")
    second = Impression("imp2", "u", "i:1", now - 30_000, None, 1, "ucb", None, "B")  # other position and arm
    click = Outcome("k", "u", "i:1", "click", now - 10_000, None)
    resent = Outcome("j", "u", "i:1", "click", now, "r9")
    assert store.record_impression(first) is RecordResult.APPLIED
    assert store.record_many([LateImpressionRecord(second)]) == [RecordResult.APPLIED]
    assert store.record_impression(second) is RecordResult.DUPLICATE  # dropped as too late: stays dropped
    assert store.record_credit(first, click) is RecordResult.APPLIED
    assert store.record_credit(second, click) is RecordResult.DUPLICATE  # decided: credited to `first`
    assert store.record_miss(click, Miss.LATE) is RecordResult.DUPLICATE
    assert store.record_credit(first, click) is RecordResult.DUPLICATE
    assert store.record_miss(resent, Miss.LATE) is RecordResult.APPLIED
    assert store.record_credit(second, resent) is RecordResult.DUPLICATE  # decided: late
    assert store.record_miss(resent, Miss.UNATTRIBUTED) is RecordResult.DUPLICATE
    # Decided, its counts not applied (on a cluster, a crash between the decision and the parts):
    # the same decision applies them, another does not.
    bought = Outcome("p", "u", "i:1", "purchase", now - 5_000, None)
    store.client.set(KeyLayout(spec.key_prefix).attribution_marker(bought.event_id), "credit:imp1")
    assert store.record_credit(second, bought) is RecordResult.DUPLICATE
    assert store.record_credit(first, bought) is RecordResult.APPLIED
    for dimension, key in first.count_keys() + second.count_keys():
        counts = store.counts(dimension, key, 0, now + BUCKET_MS)
        want = {"impression": 1, "click": 1, "purchase": 1} if (dimension, key) in first.count_keys() else {}
        assert counts == want, key
    assert store.misses(0, now + BUCKET_MS) == {"late:click": 1}
    store.close()


def test_each_event_is_decided_once(settings: Settings, redis_client: redis.Redis) -> None:
    check_each_event_is_decided_once(ConnectionSpec(settings.redis.url or ""))


def test_position_bias_and_debiased_ctr_match_the_formulas(store: RedisAttributionStore) -> None:
    now = now_ms()
    plan = {  # position -> item -> (impressions, clicks)
        "0": {"a": (40, 12), "b": (20, 4)},
        "1": {"a": (10, 1), "b": (50, 6)},
        "2": {"b": (30, 1)},
    }
    n = 0
    for position, items in plan.items():
        for item, (shown, clicked) in items.items():
            for k in range(shown):
                impression = Impression(f"x{n}", "u", item, now - 5000, None, int(position), None, None, None)
                n += 1
                store.record_impression(impression)
                if k < clicked:
                    store.record_credit(impression, Outcome(f"c{n}", "u", item, "click", now, None))

    def sctr(clicks: int, shown: int) -> float:
        return (clicks + CTR_PRIOR_ALPHA) / (shown + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)

    per_position = {p: tuple(map(sum, zip(*items.values()))) for p, items in plan.items()}
    theta = {p: sctr(c, s) / sctr(per_position["0"][1], per_position["0"][0]) for p, (s, c) in per_position.items()}
    assert store.position_bias(now - BUCKET_MS, now + BUCKET_MS) == pytest.approx(theta)
    for item in ("a", "b", "unknown"):
        clicks = sum(items.get(item, (0, 0))[1] for items in plan.values())
        examined = sum(theta[p] * items.get(item, (0, 0))[0] for p, items in plan.items())
        want = (clicks + CTR_PRIOR_ALPHA) / (examined + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)
        assert store.debiased_ctr([item], now - BUCKET_MS, now + BUCKET_MS) == pytest.approx([want])


def test_serving_reads_the_counts_through_the_online_store(store: RedisAttributionStore, settings: Settings) -> None:
    from feature_store.online_store import RedisOnlineStore

    shown = Impression("imp", "u1", "i1", now_ms(), "r1", 0, None, None, None)
    store.record_impression(shown)
    store.record_credit(shown, Outcome("c", "u1", "i1", "click", now_ms(), "r1"))
    online = RedisOnlineStore.from_settings(settings)
    assert online.attribution().window_counts(Dimension.ITEM, "i1", "1h") == {"impression": 1, "click": 1}
    assert online.attribution().debiased_ctr(["i1"], 0, now_ms() + BUCKET_MS) == pytest.approx(
        [(1 + CTR_PRIOR_ALPHA) / (1 + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)])
    online.close()


def test_server_impressions_keep_shorter_replay_markers(settings: Settings, redis_client: redis.Redis) -> None:
    """The API's own impressions (ids `imp-…`) and their credits: a replay within
    `server_impression_ttl_s` counts nothing, one after it is too old (never applied, so never
    counted twice), and their markers expire with it; a client's impression keeps `dedup_ttl_s`."""
    spec = ConnectionSpec(settings.redis.url or "")
    store = RedisAttributionStore(spec, dedup_ttl_s=2 * 86400, max_future_skew_s=SKEW_S, server_impression_ttl_s=6 * 3600)
    now = now_ms()
    server = Impression(impression_event_id("r1", "u", 0), "u", "i1", now - 60_000, "r1", 0, None, None, None)
    client = Impression("c1", "u", "i1", now - 60_000, "r2", 1, None, None, None)
    click = Outcome("k1", "u", "i1", "click", now - 30_000, "r1")
    for impression in (server, client):
        assert store.record_impression(impression, now_ms=now) is RecordResult.APPLIED
    assert store.record_credit(server, click, now_ms=now) is RecordResult.APPLIED
    later, too_late = now + 5 * 3600_000, now + 6 * 3600_000 + 120_000
    assert store.record_impression(server, now_ms=later) is RecordResult.DUPLICATE
    assert store.record_credit(server, click, now_ms=later) is RecordResult.DUPLICATE
    assert store.record_impression(server, now_ms=too_late) is RecordResult.TOO_OLD
    assert store.record_credit(server, click, now_ms=too_late) is RecordResult.TOO_OLD
    assert store.record_impression(client, now_ms=too_late) is RecordResult.DUPLICATE
    assert store.counts(Dimension.ITEM, "i1", 0, now + BUCKET_MS) == {"impression": 2, "click": 1}
    layout, short, long = KeyLayout(spec.key_prefix), (6 * 3600 + SKEW_S) * 1000, (2 * 86400 + SKEW_S) * 1000
    for key, ttl in ((layout.attribution_marker(server.event_id), short), (layout.attribution_credit(server.event_id, "click"), short),
                     (layout.attribution_marker(client.event_id), long),
                     (layout.attribution_marker(click.event_id), long)):  # the click's decision: its own window
        assert ttl - 60_000 < redis_client.pttl(key) <= ttl, key
    store.close()


def test_positions_past_the_cap_share_one_count(store: RedisAttributionStore, redis_client: redis.Redis,
                                                settings: Settings) -> None:
    """A client may log any position; each counted one is a key, a hash field per item and a term of
    every bandit read, so positions from `MAX_COUNTED_POSITION` on are counted as that one."""
    now = now_ms()
    for n, position in enumerate([0, MAX_COUNTED_POSITION - 1, MAX_COUNTED_POSITION, 5000, 10**12]):
        store.record_impression(Impression(f"deep{n}", "u", "i", now - 5000, None, position, None, None, None))
    positions = redis_client.zrange(KeyLayout(settings.redis.key_prefix).attribution_positions(), 0, -1)
    assert sorted(int(p) for p in positions) == [0, MAX_COUNTED_POSITION - 1, MAX_COUNTED_POSITION]
    counts = stored(store)
    bucket = now - 5000 - (now - 5000) % BUCKET_MS
    assert counts[(Dimension.POSITION, str(MAX_COUNTED_POSITION), bucket, "impression")] == 3
    assert counts[(Dimension.ITEM_POSITION, join_key("i", str(MAX_COUNTED_POSITION)), bucket, "impression")] == 3
