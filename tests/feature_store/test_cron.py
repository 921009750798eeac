"""`training.schedule` read as cron reads it: weekdays numbered from Sunday (0 and 7), ranges and
steps over them, and a day of month with a day of week refused rather than ANDed."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from feature_store.cron import cron_trigger
from feature_store.settings import Settings

WEDNESDAY = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def _next_days(expression: str, count: int = 7) -> list[str]:
    trigger, now, days = cron_trigger(expression), WEDNESDAY, []
    for _ in range(count):
        now = trigger.get_next_fire_time(None, now)
        days.append(now.strftime("%a %H:%M"))
        now = now.replace(minute=now.minute + 1)
    return days


@pytest.mark.parametrize("expression, days", [
    ("0 3 * * 0", ["Sun 03:00"]),
    ("0 3 * * 7", ["Sun 03:00"]),
    ("0 3 * * sun", ["Sun 03:00"]),
    ("0 3 * * 1-5", ["Thu 03:00", "Fri 03:00", "Mon 03:00", "Tue 03:00", "Wed 03:00"]),
    ("0 3 * * 5-7", ["Fri 03:00", "Sat 03:00", "Sun 03:00"]),
    ("0 3 * * */2", ["Thu 03:00", "Sat 03:00", "Sun 03:00", "Tue 03:00"]),
    ("0 3 * * 6,0", ["Sat 03:00", "Sun 03:00"]),
])  # fmt: skip
def test_weekdays_count_from_sunday_as_in_cron(expression: str, days: list[str]) -> None:
    assert _next_days(expression, len(days)) == days


def test_plain_schedules_keep_their_meaning() -> None:
    assert _next_days("30 2 * * *", 2) == ["Thu 02:30", "Fri 02:30"]
    assert cron_trigger("0 3 1 * *").get_next_fire_time(None, WEDNESDAY) == datetime(2027, 1, 1, 3, tzinfo=timezone.utc)


@pytest.mark.parametrize("expression, message", [
    ("0 3 1 * 1", "either the day of month or the day of week"),
    ("0 3 * * 8", "'8' is not a day of week"),
    ("0 3 * * 5-1", "runs backwards"),
    ("0 3 * *", "5 fields expected"),
])  # fmt: skip
def test_schedules_cron_would_read_otherwise_are_refused_at_load(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron_trigger(expression)
    with pytest.raises(ValueError, match=message):  # pydantic ValidationError
        Settings(training={"schedule": expression})
