"""ranking_samples on tied timestamps: a positive that shares its ts with the user's previous
positive (and with other users' events on the same item) never counts its own event, or any
event at its own ts, in its history or features (issue 20's leakage check for the Spark job)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from feature_store.settings import BatchSettings
from pipelines.spark.jobs.ranking_samples import SampleParams, indexed_items, transform

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _events() -> list[tuple]:
    rng = np.random.default_rng(5)
    rows = []
    for u in range(12):
        start = T0 + timedelta(hours=int(rng.integers(0, 48)))
        for position, item in enumerate(rng.choice(8, size=6, replace=False)):
            ts = start + timedelta(hours=position // 2)  # pairs of positives share one ts
            rows.append((f"e{u}-{position}", f"u{u}", f"i{item}", "click", None, ts, f"c{item % 2}"))
    return rows


def test_tied_positives_never_see_their_own_event(spark: object) -> None:
    events = _events()
    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        events, "event_id string, user_id string, item_id string, type string, value double, ts timestamp, category string"
    )
    build = transform(frame, SampleParams(batch=BatchSettings(negative_sampling_ratio=1), attribution_seconds=1800))
    try:
        rows = build.rows.collect()
    finally:
        build.release()
    positives = [r for r in rows if r.label == 1]
    assert len(positives) == len(events)
    for row in rows:
        ts = row.ts.replace(tzinfo=timezone.utc)
        before = [e for e in events if e[5] < ts]
        mine = [e for e in before if e[1] == row.user_id]
        assert row.item_popularity == sum(e[2] == row.item_id for e in before)
        assert row.user_positive_count == len(mine)
        assert sorted(row.hist_item_ids) == sorted(e[2] for e in mine)
        share = sum(e[6] == row.item_category for e in mine) / len(mine) if mine else 0.0
        assert abs(row.user_category_affinity - share) < 1e-6
    tied = [r for r in positives if any(e[1] == r.user_id and e[5] == r.ts.replace(tzinfo=timezone.utc)
                                        and e[2] != r.item_id for e in events)]  # fmt: skip
    assert len(tied) == len(positives)  # every positive shares its ts with another of the user's


def _split_shares(spark: object, events: list[tuple]) -> dict[str, float]:
    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        events, "event_id string, user_id string, item_id string, type string, value double, ts timestamp, category string"
    )
    build = transform(frame, SampleParams(batch=BatchSettings(negative_sampling_ratio=1), attribution_seconds=1800))
    try:
        splits = [r.split for r in build.rows.where("label = 1").select("split").collect()]
    finally:
        build.release()
    return {name: splits.count(name) / len(splits) for name in ("train", "validation", "test")}


def test_splits_keep_their_shares_when_the_boundaries_fall_on_tied_times(spark: object) -> None:
    # An export at day granularity: each user's first 6 clicks on day 1, the last 2 on day 2. The
    # 80% and 90% quantiles both fall on day 2, and `ts < quantile` left validation empty.
    day2 = T0 + timedelta(days=1)
    events = [(f"e{u}-{n}", f"u{u}", f"i{(u + n) % 40}", "click", None, T0 if n < 6 else day2, f"c{n % 3}")
              for u in range(60) for n in range(8)]  # fmt: skip
    # Day 1 is 75% of the positives; day 2's rows are shared by a hash: 5% to train, 10% and 10%.
    for timed in (events, [(*e[:5], T0, e[6]) for e in events]):  # then everything at one instant
        shares = _split_shares(spark, timed)
        assert abs(shares["train"] - 0.8) < 0.05, shares
        assert abs(shares["validation"] - 0.1) < 0.05 and abs(shares["test"] - 0.1) < 0.05, shares


def test_negatives_draw_from_every_item_indexed_in_id_order_on_the_executors(spark: object) -> None:
    """The items negatives are drawn from: each distinct item once, numbered 0..n-1 in id order
    (what the driver-side `enumerate(sorted(...))` gave, now without the collect), over several
    partitions; the drawn negatives are items the user never liked."""
    events = _events()
    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        events, "event_id string, user_id string, item_id string, type string, value double, ts timestamp, category string"
    ).repartition(4)
    indexed = sorted((r._index, r.item_id) for r in indexed_items(frame).collect())
    assert indexed == list(enumerate(sorted({e[2] for e in events})))
    build = transform(frame, SampleParams(batch=BatchSettings(negative_sampling_ratio=2), attribution_seconds=1800))
    try:
        rows = build.rows.collect()
    finally:
        build.release()
    liked = {(e[1], e[2]) for e in events}
    sampled = [(r.user_id, r.item_id) for r in rows if r.label_source == "sampled"]
    assert sampled and not set(sampled) & liked and {item for _, item in sampled} <= {e[2] for e in events}
