"""`training.schedule` read as cron reads it: weekdays numbered from Sunday (0 and 7), ranges and
steps over them, and a day of month with a day of week refused rather than ANDed."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_a_schedule_that_never_fires_is_refused(expression: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"cron '{expression}' never fires")):
        cron_trigger(expression)
    assert cron_trigger("0 0 29 2 *").get_next_fire_time(None, WEDNESDAY) == datetime(2028, 2, 29, tzinfo=timezone.utc)


@pytest.mark.parametrize("expression, field", [
    ("*/ * * * *", "minute"),
    ("0 1/ * * *", "hour"),
    ("0 3 */ * *", "day of month"),
    ("0 3 * 1/ *", "month"),
    ("0 3 * * */", "day of week"),
    ("0 3 * * 1/", "day of week"),
    ("0 3 * * 1,2/", "day of week"),
])  # fmt: skip
def test_an_empty_step_is_refused_in_every_field(expression: str, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"cron '{expression}': empty step in the {field} field")):
        cron_trigger(expression)


@pytest.mark.parametrize("expression, field", [
    ("60 * * * *", "minute"),
    ("0 24 * * *", "hour"),
    ("0 3 0 * *", "day of month"),
    ("0 3 32 * *", "day of month"),
    ("0 3 * 13 *", "month"),
    ("*/0 * * * *", "minute"),
    ("0-59/61 * * * *", "minute"),
    ("0 x * * *", "hour"),
    ("0 3 * * 8", "day of week"),
])  # fmt: skip
def test_a_bad_field_is_named_with_the_whole_expression(expression: str, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"cron '{expression}': invalid {field} field")):
        cron_trigger(expression)
