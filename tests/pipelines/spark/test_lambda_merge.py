"""Lambda consistency: a Spark batch run over the older events plus the live writes over the newer
ones (what `POST /v1/events` applies through `LiveWriter`), merged by the online read, equal a full
recompute over every event."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis

from feature_store.catalog import Catalog
from feature_store.definitions import ALL_EVENTS, POSITIVE, UNKNOWN_CATEGORY, user_category_id
from feature_store.event_log import LocalEventLog
from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import Event, Item
from feature_store.settings import EventLogSettings, Settings
from pipelines.spark.runner import run_jobs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CATEGORIES = {f"i{n}": [["Drama"], ["Comedy", "Drama"], ["Action"]][n % 3] for n in range(12)}
CATEGORIES["iu"] = ["unknown"]  # a real category of that name (an ml-100k genre), not "no category"
KINDS = ["impression", "click", "rating", "purchase", "impression", "rating"]


def events_from(first: int, count: int, start: datetime) -> list[Event]:
    return [
        Event(event_id=f"e{n}", user_id=f"u{n % 5}", item_id=f"i{(n * 7) % 12}", type=KINDS[n % 6],
              value=float(n % 5 + 1) if KINDS[n % 6] == "rating" else None, ts=start + timedelta(minutes=n - first))
        for n in range(first, first + count)
    ]


def recompute(events: list[Event]) -> dict[str, dict[str, object]]:
    """Full recompute of the merged features straight from the events (the definitions' filters)."""
    users: dict[str, dict[str, object]] = {}
    items: dict[str, int] = {}
    for event in sorted(events, key=lambda e: (e.ts, e.event_id), reverse=True):  # newest first
        user = users.setdefault(event.user_id, {"event_count": 0, "positive_count": 0, "recent_items": []})
        user["event_count"] += ALL_EVENTS.matches(event.type, event.value)  # type: ignore[operator]
        if POSITIVE.matches(event.type, event.value):
            user["positive_count"] += 1  # type: ignore[operator]
            items[event.item_id] = items.get(event.item_id, 0) + 1
            recent: list[str] = user["recent_items"]  # type: ignore[assignment]
            if event.item_id not in recent and len(recent) < 50:
                recent.append(event.item_id)
    return {"users": users, "items": items}  # type: ignore[dict-item]


def repeating_user(watermark: datetime) -> list[Event]:
    """Clicks on ten items, then 55 on one item (more than `recent_items` holds), then one exactly
    at the batch watermark (the batch covers ts < watermark, the live read the rest)."""
    clicks = [(f"i{n}", watermark - timedelta(minutes=50 - n)) for n in range(10)]
    clicks += [("i11", watermark - timedelta(minutes=30, seconds=-n)) for n in range(55)]
    clicks.append(("i10", watermark))
    return [Event(event_id=f"rep{n}", user_id="rep", item_id=item, type="click", ts=ts) for n, (item, ts) in enumerate(clicks)]


def test_batch_plus_live_equals_full_recompute(spark: object, settings: Settings, redis_client: redis.Redis) -> None:
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=i, categories=c) for i, c in CATEGORIES.items())
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    older = events_from(0, 90, hour - timedelta(hours=3))  # batch watermark: hour - 2h; 30 of them after it
    older += repeating_user(hour - timedelta(hours=2))
    older += [Event(event_id=f"nocat{n}", user_id="nocat", item_id=item, type="click", ts=hour - timedelta(hours=2, minutes=20 - 10 * n))
              for n, item in enumerate(["i0", "x0"])]  # x0: not in the catalog, so in no category
    older.append(Event(event_id="unk0", user_id="unk", item_id="iu", type="click", ts=hour - timedelta(hours=2, minutes=5)))
    newer = events_from(90, 40, hour - timedelta(hours=1))  # only the live writes see these
    with LocalEventLog(settings.event_log_dir, EventLogSettings(fsync=False)) as log:
        log.append(older)
    summaries = {s.job: s for s in run_jobs(spark, settings, ["compact", "batch_features"])}  # type: ignore[arg-type]
    assert summaries["batch_features"].details["watermark"] == (hour - timedelta(hours=2)).isoformat()
    store = RedisOnlineStore.from_settings(settings)
    # Every event reaches the live writes once, as the API applies each posted batch (older ones too:
    # they are before the batch watermark, so the merge must not count them twice).
    assert store.live_writer().write(older + newer, item_categories=CATEGORIES).applied == 199

    expected = recompute(older + newer)
    assert expected["users"]["rep"]["recent_items"] == ["i10", "i11", *(f"i{n}" for n in range(9, -1, -1))]
    users = sorted(expected["users"])
    merged = store.get_features("user", users, ["event_count", "positive_count", "recent_items"])
    for row, user in enumerate(users):
        want = expected["users"][user]
        got = {name: merged[name][row] for name in merged}
        assert int(got["event_count"]) == want["event_count"], user
        assert int(got["positive_count"]) == want["positive_count"], user
        assert list(got["recent_items"]) == want["recent_items"], user
    # An item without a category adds to no category feature, in the batch as in the live writes.
    categories = store.get_features("user", ["nocat", "unk"], ["last_category", "top_categories"])
    assert (categories["last_category"][0], list(categories["top_categories"][0])) == ("Drama", ["Drama"])
    assert (categories["last_category"][1], list(categories["top_categories"][1])) == ("unknown", ["unknown"])
    # The affinity is a share of all the user's positives, as the training rows compute it: one
    # without a category counts in UNKNOWN_CATEGORY (there a real category of that name too).
    shares = {("nocat", "Drama"): 0.5, ("nocat", UNKNOWN_CATEGORY): 0.5, ("unk", UNKNOWN_CATEGORY): 1.0}
    ids = [user_category_id(user, category) for user, category in shares]
    affinity = store.get_features("user_category", ids, ["affinity"])["affinity"]
    assert [float(a) for a in affinity] == list(shares.values())
    items = sorted(expected["items"])
    popularity = store.get_features("item", items, ["popularity_all"])["popularity_all"]
    assert [int(n) for n in popularity] == [expected["items"][i] for i in items]
    store.close()
