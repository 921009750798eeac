"""The speed layer's pure helpers: parsing event-log lines and the lateness rule."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from feature_store.schemas import Event
from feature_store.attribution import event_ms
from pipelines.flink.features import BadEventLine, is_in_the_future, is_too_late, parse_event_line, too_late_from_ms


def test_parses_an_event_log_line() -> None:
    event = Event(event_id="e1", user_id="u1", item_id="i1", type="click", ts=datetime(2024, 1, 1, tzinfo=timezone.utc))
    parsed = parse_event_line(event.to_json_line())
    assert parsed == event
    assert event_ms(parsed) == 1_704_067_200_000


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ('{"event_id": "e1"}', "user_id"),
        ('{"event_id":"e1","user_id":"u","item_id":"i","type":"teleport","ts":"2024-01-01T00:00:00Z"}', "type"),
        ("not json at all", "line"),
    ],
)
def test_a_bad_line_gets_an_error_naming_what_is_wrong(line: str, names: str) -> None:
    with pytest.raises(BadEventLine, match=names):
        parse_event_line(line)


def test_lateness_rule() -> None:
    assert not is_too_late(ts_ms=1_000, watermark_ms=1_500, allowed_lateness_ms=500)
    assert is_too_late(ts_ms=999, watermark_ms=1_500, allowed_lateness_ms=500)
    assert not is_too_late(ts_ms=0, watermark_ms=-(2**63), allowed_lateness_ms=0)
    assert too_late_from_ms(1_000, 500) == 1_501  # the first watermark at which it is too late


def test_future_rule() -> None:
    assert not is_in_the_future(ts_ms=1_500, now_ms=1_000, max_future_skew_ms=500)
    assert is_in_the_future(ts_ms=1_501, now_ms=1_000, max_future_skew_ms=500)
    assert is_in_the_future(ts_ms=253_402_300_799_000, now_ms=1_000, max_future_skew_ms=900_000)
