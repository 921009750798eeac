"""as_of: time buckets change how the running features are computed, never their values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pipelines.spark.point_in_time import as_of, stack

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def test_bucketed_features_equal_one_bucket_and_never_see_same_ts(spark: object) -> None:
    # Events every 25 minutes over ~2 days for two users, facts on some, samples at event times
    # (same ts as an event: must not count it) and between them.
    events = [
        (f"u{n % 2}", T0 + timedelta(minutes=25 * n), "click" if n % 3 else "view", [f"i{n}"] if n % 4 == 0 else None)
        for n in range(120)
    ]
    samples = [(f"u{n % 2}", T0 + timedelta(minutes=25 * n + (0 if n % 2 else 7))) for n in range(0, 120, 5)]
    event_frame = spark.createDataFrame(events, "user_id string, ts timestamp, type string, hist array<string>")  # type: ignore[attr-defined]
    sample_frame = spark.createDataFrame(samples, "user_id string, ts timestamp")  # type: ignore[attr-defined]

    def features(bucket_seconds: int) -> list[tuple]:
        rows = as_of(
            stack(sample_frame, event_frame), ["user_id"], counts={"clicks": "type = 'click'"},
            latest={"last_hist": "hist"}, bucket_seconds=bucket_seconds,
        ).orderBy("user_id", "ts").collect()  # fmt: skip
        return [(r.user_id, r.ts, r.clicks, r.last_hist) for r in rows]

    hourly, single = features(3600), features(10**9)
    assert hourly == single
    expected = []
    for user, ts in sorted(samples):
        before = [e for e in events if e[0] == user and e[1] < ts.replace(tzinfo=timezone.utc)]
        hist = [e[3] for e in before if e[3] is not None]
        expected.append((sum(e[2] == "click" for e in before), hist[-1] if hist else None))
    assert [(clicks, last) for _, _, clicks, last in hourly] == expected
