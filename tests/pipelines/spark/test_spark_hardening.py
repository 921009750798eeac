"""The batch layer against rows the API now refuses (issue 13, items 1 and 3): `compact` rejects
far-future events, ids with control characters or surrounding whitespace, and ids, context text
and positions out of the event schema's bounds, with their file:line,
and `batch_features`, given a master table and catalog written before those checks, keeps its
watermark at the newest event that is not in the future and quarantines bad rows with their
location instead of failing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from feature_store.catalog import ITEM_SCHEMA
from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import MAX_LONG
from feature_store.settings import Settings
from pipelines.spark.common import BatchJobError
from pipelines.spark.jobs import batch_features, compact
from tests.pipelines.spark.conftest import batch_settings

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)


def _line(event_id: str, user: str, item: str, ts: str) -> str:
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "type": "click", "ts": ts}) + "\n"


def test_compact_rejects_future_events_and_bad_ids_with_file_and_line(spark: object, tmp_path: Path) -> None:
    settings = batch_settings(tmp_path / "state")
    partition = settings.event_log_dir / "dt=2024-05-01" / "hr=08"
    partition.mkdir(parents=True)
    soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    later = (datetime.now(timezone.utc) + timedelta(hours=2)).isoformat()
    (partition / "part-old.jsonl").write_text(
        _line("e1", "u1", "i1", "2024-05-01T08:00:00Z")
        + _line("e2", "u1", "a\x1fb", "2024-05-01T08:01:00Z")  # line 2
        + _line("e3", "u1", "i2", "9999-12-31T23:59:59Z")  # 3
        + _line("e4", " u1", "i2", "2024-05-01T08:02:00Z")  # 4
        + _line("e5", "u1", "i3", soon)  # inside the skew allowance: kept
        + _line("e6", "u\x00", "i3", "2024-05-01T08:03:00Z")  # 6
        + _line("e7", "u1", "i4", later)  # 7
        + _line("e8\x1e", "u1", "i4", "2024-05-01T08:04:00Z")  # 8
        + _line("e9", "u1", "i5 ", "2024-05-01T08:05:00Z")  # 9
        + json.dumps({"event_id": "e10", "user_id": "u1", "item_id": "i6", "type": "impression",
                      "ts": "2024-05-01T08:06:00Z", "context": {"position": MAX_LONG, "candidate_count": MAX_LONG,
                                                                "ranks": {"a": MAX_LONG}}}) + "\n"  # the API's bound: kept
        + _line("e11", "u1", "i" * 129, "2024-05-01T08:07:00Z")  # 11: longer than an id may be
        + json.dumps({"event_id": "e12", "user_id": "u1", "item_id": "i7", "type": "impression",
                      "ts": "2024-05-01T08:08:00Z", "context": {"position": -1}}) + "\n"  # 12
        + json.dumps({"event_id": "e13", "user_id": "u1", "item_id": "i7", "type": "impression",
                      "ts": "2024-05-01T08:09:00Z", "context": {"request_id": "r" * 129}}) + "\n"  # 13
        + json.dumps({"event_id": "e14", "user_id": "u1", "item_id": "i7", "type": "impression",
                      "ts": "2024-05-01T08:10:00Z", "context": {"policy": "p" * 256, "arm": "a" * 129}}) + "\n"  # at the bounds: kept
        + "".join(json.dumps({"event_id": f"e{15 + n}", "user_id": "u1", "item_id": "i8", "type": "impression",
                              "ts": "2024-05-01T08:11:00Z", "context": context}) + "\n" for n, context in enumerate([
            {"ranks": {f"t{k}": k for k in range(17)}},  # 15
            {"candidates": ["a", "b"], "candidate_scores": [0.5], "candidate_count": 2},  # 16
            {"candidates": ["a", "b"], "candidate_scores": [0.5, 0.4], "candidate_count": 1},  # 17
            {"candidates": ["a", " b"], "candidate_scores": [0.5, 0.4], "candidate_count": 9},  # 18
            {"ranker_propensities": {"a": None}},  # 19: a missing value would break the credit's sums
            {"candidates": ["a"], "candidate_scores": [None], "candidate_count": 1},  # 20
            {"candidates": ["a", "b"], "candidate_scores": [0.5, 0.4], "candidate_count": 9,
             "ranks": {f"t{k}": k for k in range(16)}},  # at the bounds: kept
        ]))
    )
    summary = compact.run(spark, settings)  # type: ignore[arg-type]

    rejects = {r.line_number: r.reason for r in spark.read.parquet(f"{settings.batch_uri}/rejects").collect()}  # type: ignore[attr-defined]
    assert set(rejects) == {2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 18, 19, 20}, rejects
    assert [rejects[n] for n in (15, 16, 17, 18, 19, 20)] == [
        "context.ranks has more than 16 entries", "context.candidates and context.candidate_scores differ in length",
        "context.candidate_count is below the number of candidates logged", "context.candidates holds an invalid id",
        "context.ranker_propensities has a value outside [0, 1]", "context.candidate_scores has a missing or non-finite score"]
    # What the speed layer's parse (the event schema) refuses, the batch layer refuses too.
    assert (rejects[11], rejects[12], rejects[13]) == (
        "item_id longer than 128 characters", "context.position is negative", "context.request_id longer than 128 characters")
    assert "item_id contains a control character" == rejects[2]
    assert "user_id contains a control character" == rejects[6]
    assert "event_id contains a control character" == rejects[8]
    assert "user_id starts or ends with whitespace" == rejects[4]
    assert "item_id starts or ends with whitespace" == rejects[9]
    for line in (3, 7):
        assert rejects[line].startswith("ts is more than 900 s ahead of the clock"), rejects[line]
    kept = sorted(r.event_id for r in spark.read.parquet(f"{settings.batch_uri}/events").collect())  # type: ignore[attr-defined]
    assert kept == ["e1", "e10", "e14", "e21", "e5"] and summary.rejects == 16


def test_compact_of_a_log_with_no_valid_event_is_a_clear_error(spark: object, tmp_path: Path) -> None:
    settings = batch_settings(tmp_path / "state")
    partition = settings.event_log_dir / "dt=2024-05-01" / "hr=08"
    partition.mkdir(parents=True)
    (partition / "part-old.jsonl").write_text(_line("e1", "u1", "i1", "9999-12-31T23:59:59Z"))  # in the future
    with pytest.raises(BatchJobError, match=r"holds no valid event \(1 lines read, 1 rejected"):
        compact.run(spark, settings)  # type: ignore[arg-type]


def _old_master_table(spark: object, settings: Settings, rows: list[tuple[str, str, str, datetime]]) -> None:
    """The master table as `compact` wrote it before it checked ids and event time."""
    from pyspark.sql import functions as F

    frame = spark.createDataFrame(  # type: ignore[attr-defined]
        [(e, u, i, "click", None, ts, None, None, None, None, None) for e, u, i, ts in rows],
        "event_id string, user_id string, item_id string, type string, value double, ts timestamp, "
        "request_id string, position bigint, page string, experiment string, arm string",
    )
    frame = frame.withColumn("dt", F.date_format("ts", "yyyy-MM-dd"))
    frame.write.mode("overwrite").partitionBy("dt").parquet(f"{settings.batch_uri}/events")


def _old_catalog(settings: Settings, items: dict[str, list[str]]) -> None:
    settings.catalog_dir.mkdir(parents=True)
    rows = [{"item_id": i, "title": i, "categories": c, "available": True, "created_at": None, "metadata": "{}"}
            for i, c in items.items()]
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), settings.catalog_dir / "items.parquet")


def _run_batch_features(spark: object, settings: Settings) -> tuple[object, dict[str, list]]:
    settings = settings.model_copy(update={"spark": settings.spark.model_copy(update={"shuffle_partitions": 4})})
    summary = batch_features.run(spark, settings)  # type: ignore[arg-type]
    store = RedisOnlineStore.from_settings(settings)
    try:
        users = store.get_features("user", ["u1", "u2"], ["history"])
        items = store.get_features("item", ["i1", "i2", "i3"], ["popularity_all", "primary_category"])
    finally:
        store.close()
    return summary, {"history": [list(h) for h in users["history"]], "popularity": list(items["popularity_all"]),
                     "category": list(items["primary_category"])}


def test_watermark_stays_at_the_newest_event_not_in_the_future(spark: object, settings: Settings) -> None:
    _old_master_table(spark, settings, [
        ("e1", "u1", "i1", T0), ("e2", "u1", "i2", T0 + timedelta(hours=2, minutes=30)),
        ("e3", "u2", "i3", T0 + timedelta(hours=3, minutes=10)), ("far", "u1", "i3", datetime(9999, 12, 31, 23, 59, 59)),
    ])  # fmt: skip
    _old_catalog(settings, {"i1": ["c1"], "i2": ["c2"], "i3": ["c3"]})

    summary, views = _run_batch_features(spark, settings)

    # Past e3, the newest event not in the future (a log older than the speed layer's replay window).
    assert summary.details["watermark"] == "2024-05-01T12:00:00+00:00"  # type: ignore[attr-defined]
    assert views["history"] == [["i2", "i1"], ["i3"]]  # not the far-future event
    assert views["popularity"] == [1, 1, 1]


def test_the_watermark_passes_the_newest_event_once_the_speed_layer_cannot_take_its_hour(spark: object) -> None:
    """Floored to the newest event's hour while the live writer may still apply an event of that
    hour; past the newest event (the next hour) once that hour ended `replay_window` ago, since
    then only the batch views can serve it (an imported log never reaches the live writer)."""
    newest = datetime(2026, 3, 1, 13, 30, 12, tzinfo=timezone.utc)
    events = spark.createDataFrame([(newest - timedelta(hours=5),), (newest,)], "ts timestamp")  # type: ignore[attr-defined]
    window = timedelta(days=2)
    hour_end = datetime(2026, 3, 1, 14, tzinfo=timezone.utc)
    for now, expected in [(newest + timedelta(minutes=10), hour_end - timedelta(hours=1)),
                          (hour_end + window - timedelta(seconds=1), hour_end - timedelta(hours=1)),
                          (hour_end + window, hour_end), (hour_end + 30 * window, hour_end)]:  # fmt: skip
        assert batch_features.watermark_of(events, now, window) == expected, now


def test_bad_rows_are_quarantined_with_their_location(spark: object, settings: Settings) -> None:
    _old_master_table(spark, settings, [
        ("e1", "u1", "i1", T0), ("e2", "u1", "a\x1fb", T0 + timedelta(minutes=5)),
        ("e3", "u\x1e2", "i2", T0 + timedelta(minutes=10)), ("e4", "u2", "i2", T0 + timedelta(hours=1, minutes=5)),
        ("e5", "u2", "i3", T0 + timedelta(hours=2)),
    ])  # fmt: skip
    _old_catalog(settings, {"i1": ["c1"], "i2": ["Dra\x1fma", "c2"], "i3": ["c3"], "x\x1fy": ["c4"]})

    summary, views = _run_batch_features(spark, settings)

    assert views["history"] == [["i1"], ["i3", "i2"]]  # e5 too: the watermark is past it (an old log)
    assert views["popularity"] == [1, 1, 1]
    assert views["category"] == ["c1", "", "c3"]  # i2's catalog row is quarantined (no category), its events kept
    quarantined = spark.read.parquet(f"{settings.batch_uri}/quarantine/batch_features").collect()  # type: ignore[attr-defined]
    found = {(r.key, r.reason) for r in quarantined}
    assert found == {
        ("e2", "item_id contains a control character"), ("e3", "user_id contains a control character"),
        ("i2", "categories contains a control character"), ("x\x1fy", "item_id contains a control character"),
    }
    catalog_rows = {r.key: (r.source_file, r.row) for r in quarantined if r.key in ("i2", "x\x1fy")}
    assert catalog_rows == {"i2": (catalog_rows["i2"][0], 2), "x\x1fy": (catalog_rows["i2"][0], 4)}
    assert catalog_rows["i2"][0].endswith("catalog/items.parquet")
    assert all(r.source_file.startswith("file:") and "/events/dt=2024-05-01/" in r.source_file
               for r in quarantined if r.key in ("e2", "e3"))
    assert summary.rejects == 4  # type: ignore[attr-defined]
