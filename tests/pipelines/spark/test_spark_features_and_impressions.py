"""batch_features published to a real Redis with its watermark; impression negatives in samples,
and clicks timed at the impression they are attributed to."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq

from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import Event, EventContext, EventType, Item
from feature_store.catalog import Catalog
from feature_store.settings import Settings
from pipelines.spark.runner import run_jobs
from tests.pipelines.spark.conftest import write_events

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def _shop_events() -> list[Event]:
    """u1 sees i1 and i2 twice, clicks i1 each time; u2 only rates (no impressions)."""
    events = []
    for n, start in enumerate([T0, T0 + timedelta(hours=2)]):
        request = EventContext(request_id=f"r{n}")
        events += [
            Event(event_id=f"imp{n}a", user_id="u1", item_id="i1", type=EventType.IMPRESSION, ts=start, context=request),
            Event(event_id=f"imp{n}b", user_id="u1", item_id="i2", type=EventType.IMPRESSION, ts=start, context=request),
            Event(event_id=f"clk{n}", user_id="u1", item_id="i1", type=EventType.CLICK, ts=start + timedelta(minutes=1), context=request),
        ]
    events += [
        Event(event_id=f"rate{k}", user_id="u2", item_id=f"i{k}", type=EventType.RATING, value=5.0, ts=T0 + timedelta(minutes=10 * k))
        for k in range(1, 4)
    ]
    # u3 acts on items without liking them: a low rating and a skip (no positive)
    events += [Event(event_id="low", user_id="u3", item_id="i3", type=EventType.RATING, value=1.0, ts=T0 + timedelta(minutes=40)),
               Event(event_id="skip", user_id="u3", item_id="i2", type=EventType.SKIP, ts=T0 + timedelta(minutes=50))]
    # after the last full hour: in the batch views all the same, as the log is older than the speed
    # layer's replay window (an import: nothing else would ever serve it)
    events.append(Event(event_id="late", user_id="u2", item_id="i3", type=EventType.CLICK, ts=T0 + timedelta(hours=3, minutes=5)))
    return events


def test_features_published_and_impression_negatives(spark: object, settings: Settings) -> None:
    settings = settings.model_copy(update={"spark": settings.spark.model_copy(update={"shuffle_partitions": 4})})
    write_events(settings, _shop_events())
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=f"i{k}", categories=[f"c{k % 2}"]) for k in range(1, 4))
    summaries = {s.job: s for s in run_jobs(spark, settings, ["compact", "batch_features", "ranking_samples"])}  # type: ignore[arg-type]

    assert summaries["batch_features"].details["watermark"] == "2024-05-01T12:00:00+00:00"
    manifest = json.loads((Path(settings.batch_uri) / "features" / "_manifest.json").read_text())
    assert manifest["watermark"] == "2024-05-01T12:00:00+00:00"
    store = RedisOnlineStore.from_settings(settings)
    try:
        items = store.get_features("item", ["i1", "i2", "i3"], ["popularity_all", "ctr", "primary_category"])
        users = store.get_features("user", ["u1", "u2", "u3"], ["event_count", "history", "seen"])
    finally:
        store.close()
    assert list(items["popularity_all"]) == [3, 1, 2]  # i1: two clicks and a rating; i3: a rating and the late click
    assert abs(items["ctr"][0] - (2 + 1.0) / (2 + 21.0)) < 1e-6
    assert list(items["primary_category"]) == ["c1", "c0", "c1"]
    assert list(users["event_count"]) == [6, 4, 2]
    assert list(users["history"][1]) == ["i3", "i2", "i1"]
    # the seen filter's items: every interaction but an impression (u1 was shown i2, never acted on it)
    assert [list(seen) for seen in users["seen"]] == [["i1"], ["i3", "i2", "i1"], ["i2", "i3"]]
    assert list(users["history"][2]) == []

    samples = pq.read_table(Path(settings.batch_uri) / "samples").to_pandas()
    u1 = samples[samples["user_id"] == "u1"]
    assert sorted(zip(u1["label_source"], u1["item_id"], u1["label"])) == sorted(
        [("click", "i1", 1), ("click", "i1", 1), ("impression", "i2", 0), ("impression", "i2", 0)])
    second = u1[(u1["label_source"] == "impression")].sort_values("ts").iloc[1]
    assert list(second["hist_item_ids"]) == ["i1"]  # the click at T0+1min, not the one after this impression
    assert abs(second["item_ctr"] - (0 + 1.0) / (1 + 21.0)) < 1e-6  # one earlier impression of i2, no click
    assert second["item_popularity"] == 1  # u2's rating of i2 at T0+20min
    assert set(samples.loc[samples["user_id"] == "u2", "label_source"]) <= {"rating", "click", "sampled"}
    # Each click's row is timed at its list's impressions, with what the ranker had then: not the
    # list's own impressions (the second click's row would count 5 earlier events, not 3).
    clicks = u1[u1["label_source"] == "click"].sort_values("ts")
    assert [ts.to_pydatetime().replace(tzinfo=timezone.utc) for ts in clicks["ts"]] == [T0, T0 + timedelta(hours=2)]
    assert list(clicks["user_event_count"]) == [0, 3] and list(clicks.iloc[1]["hist_item_ids"]) == ["i1"]
