"""Interleaving context through the batch layer: an interleaved slot's `ranks` and
`ranker_propensities` reach `attributed_impressions/` as they were logged, a line written before
they existed reads as nulls beside them, and a line with a negative rank is a reject."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from feature_store.schemas import Event
from feature_store.settings import Settings
from pipelines.spark.jobs import attribution, compact
from tests.pipelines.spark.conftest import write_events

T0 = datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc)


def _event(event_id: str, item: str, type: str, seconds: int, **context: object) -> Event:
    return Event.model_validate({"event_id": event_id, "user_id": "u1", "item_id": item, "type": type,
                                 "ts": (T0 + timedelta(seconds=seconds)).isoformat(), "context": context})


def test_ranks_and_ranker_propensities_reach_attributed_impressions(spark: object, tmp_path: object) -> None:
    settings = Settings(state_dir=tmp_path, spark={"master": "local[2]", "shuffle_partitions": 4})  # type: ignore[arg-type]
    interleaved = {"experiment": "pi", "arm": "pi:interleaved", "request_id": "r1"}
    write_events(settings, [
        _event("imp-r1-0", "i1", "impression", 0, position=0, team="A", propensity=0.6, ranks={"A": 0, "B": 4},
               ranker_propensities={"A": 0.9, "B": 0.3}, **interleaved),
        _event("imp-r1-1", "i2", "impression", 0, position=1, team="B", propensity=0.5, ranks={"B": 0},
               ranker_propensities={"A": 0.25, "B": 0.75}, **interleaved),
        _event("c1", "i2", "click", 5, request_id="r1"),
    ])  # fmt: skip
    old = {"event_id": "old-imp", "user_id": "u2", "item_id": "i1", "type": "impression", "ts": T0.isoformat(),
           "context": {"request_id": "old-r", "position": 0, "team": "A"}}
    bad = {**old, "event_id": "bad-imp", "context": {"request_id": "bad-r", "ranks": {"A": -2}}}
    partition = settings.event_log_dir / "dt=2024-06-01" / "hr=10"
    (partition / "part-old.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(bad) + "\n")

    compact.run(spark, settings)  # type: ignore[arg-type]
    attribution.run(spark, settings)  # type: ignore[arg-type]

    rows = {r.event_id: r for r in spark.read.parquet(f"{settings.batch_uri}/attributed_impressions").collect()}  # type: ignore[attr-defined]
    assert set(rows) == {"imp-r1-0", "imp-r1-1", "old-imp"}
    assert (rows["imp-r1-0"].ranks, rows["imp-r1-0"].ranker_propensities) == ({"A": 0, "B": 4}, {"A": 0.9, "B": 0.3})
    assert (rows["imp-r1-1"].ranks, rows["imp-r1-1"].click) == ({"B": 0}, 1)
    assert rows["imp-r1-1"].ranker_propensities == pytest.approx({"A": 0.25, "B": 0.75})
    assert (rows["old-imp"].ranks, rows["old-imp"].ranker_propensities, rows["old-imp"].team) == (None, None, "A")
    rejects = spark.read.parquet(str(settings.batch_uri) + "/rejects").collect()  # type: ignore[attr-defined]
    assert [(r.line_number, r.reason) for r in rejects] == [(2, "context.ranks has a negative rank")]
    assert rejects[0].source_file.endswith("part-old.jsonl")
