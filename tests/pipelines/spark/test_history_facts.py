"""The ranker's training histories (`point_in_time.history_facts`) against the serving rule: the
user's positives up to each time, each item once at its newest occurrence, the newest `max_len`,
oldest first; users who repeat items heavily included."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.spark.point_in_time import history_facts

pytestmark = pytest.mark.timeout(300)


def _serving_history(items: list[str], max_len: int) -> list[str]:
    """What the serving history (a sorted set by last time) holds, oldest first."""
    last = {item: n for n, item in enumerate(items)}
    return sorted(last, key=last.__getitem__)[-max_len:]


def test_histories_hold_each_item_once_at_its_newest_positive(spark: object) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(3)
    sequences = {"rep": ["a", "b", "c", "a", "a", "a"],  # a review's case: the serving history is b, c, a
                 "heavy": [rng.choice("abcdefgh") for _ in range(40)], "plain": list("abcdefg")}
    rows = [(user, t0 + timedelta(minutes=n), f"{user}-{n}", item, "x")
            for user, items in sequences.items() for n, item in enumerate(items)]
    frame = spark.createDataFrame(rows, "user_id string, ts timestamp, event_id string, item_id string, category string")  # type: ignore[attr-defined]
    facts = {(r.user_id, r.minute): r.hist_item_ids  # minutes from t0: no collected timestamps (local time)
             for r in history_facts(frame, 3).selectExpr("user_id", f"(unix_seconds(ts) - {int(t0.timestamp())}) div 60 AS minute",
                                                         "hist_item_ids").collect()}
    for user, items in sequences.items():
        for n in range(len(items)):
            assert facts[(user, n)] == _serving_history(items[: n + 1], 3), (user, n)
