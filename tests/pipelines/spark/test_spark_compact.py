"""compact on a small real event log: malformed rows go to rejects, duplicates go away, re-runs change nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.schemas import Event, EventType
from pipelines.spark.jobs import compact
from tests.pipelines.spark.conftest import batch_settings, write_events

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def _events() -> list[Event]:
    return [
        Event(event_id=f"e{i}", user_id=f"u{i % 3}", item_id=f"i{i % 5}", type=EventType.CLICK, ts=T0 + timedelta(hours=i * 7))
        for i in range(12)
    ]


def _table(spark: object, path: str) -> list[tuple]:
    rows = spark.read.parquet(path).orderBy("event_id").collect()  # type: ignore[attr-defined]
    return [tuple(row) for row in rows]


def test_compact_rejects_dedups_and_is_idempotent(spark: object, tmp_path: Path) -> None:
    settings = batch_settings(tmp_path / "state")
    events = _events()
    write_events(settings, events)
    write_events(settings, events[:4])  # the same events again, in other files
    partition = settings.event_log_dir / "dt=2024-03-01" / "hr=12"
    good = '{"event_id":"e0","user_id":"u0","item_id":"i0","type":"click","ts":"2024-03-01T12:00:00Z"}\n'
    (partition / "part-zz-bad.jsonl").write_text(
        good
        + "not json at all\n"  # line 2
        + good + "\n"  # a blank line 4 is skipped, not rejected
        + '{"event_id":"b1","user_id":"u1","item_id":"i1","type":"teleport","ts":"2024-03-01T12:00:00Z"}\n'  # 5
        + '{"event_id":"b2","user_id":"u1","item_id":"i1","type":"click","ts":"yesterday"}\n'  # 6
        + good
        + '{"event_id":"b3","user_id":"","item_id":"i1","type":"click","ts":"2024-03-01T12:00:00Z"}\n'  # 8
        + good
    )
    (partition / ".part-zz-open.jsonl.inprogress").write_text(
        '{"event_id":"hidden","user_id":"u1","item_id":"i1","type":"click","ts":"2024-03-01T12:00:00Z"}\n'
    )

    summary = compact.run(spark, settings)  # type: ignore[arg-type]

    assert (summary.rows_in, summary.rows_out, summary.rejects) == (16 + 8, 12, 4)
    assert summary.details["duplicates"] == 8
    rejects = {r.reason: r for r in spark.read.parquet(f"{settings.batch_uri}/rejects").collect()}  # type: ignore[attr-defined]
    assert set(rejects) == {
        "malformed JSON or a field of the wrong type", "unknown event type: teleport", "unparsable ts: yesterday",
        "missing user_id",
    }
    assert all(r.source_file.endswith("part-zz-bad.jsonl") for r in rejects.values())
    assert rejects["unparsable ts: yesterday"].raw.find('"b2"') >= 0
    lines = {reason: r.line_number for reason, r in rejects.items()}
    assert lines == {
        "malformed JSON or a field of the wrong type": 2, "unknown event type: teleport": 5,
        "unparsable ts: yesterday": 6, "missing user_id": 8,
    }
    table = _table(spark, f"{settings.batch_uri}/events")
    assert [row[0] for row in table] == sorted(e.event_id for e in events)
    dates = {str(row.dt) for row in spark.read.parquet(f"{settings.batch_uri}/events").select("dt").distinct().collect()}  # type: ignore[attr-defined]
    assert dates == {f"{e.ts:%Y-%m-%d}" for e in events}

    again = compact.run(spark, settings)  # type: ignore[arg-type]
    assert (again.rows_out, again.rejects) == (12, 4)
    assert {r.reason: r.line_number for r in spark.read.parquet(f"{settings.batch_uri}/rejects").collect()} == lines  # type: ignore[attr-defined]
    assert _table(spark, f"{settings.batch_uri}/events") == table


def test_line_numbers_tell_identical_lines_apart(spark: object, tmp_path: Path) -> None:
    from pipelines.spark.line_numbers import with_line_numbers

    log = tmp_path / "part-0.jsonl"
    log.write_text("same\r\nother\n\nsame\n")
    rows = spark.createDataFrame(  # type: ignore[attr-defined]
        [(log.as_uri(), "same"), (log.as_uri(), "other"), (log.as_uri(), "same")], "source_file string, raw string"
    )
    numbered = sorted((r.raw, r.line_number) for r in with_line_numbers(rows).collect())
    assert numbered == [("other", 2), ("same", 1), ("same", 4)]
