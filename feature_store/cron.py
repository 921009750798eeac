"""Standard 5-field crontab expressions (UTC) as APScheduler 3 triggers, read as cron reads them.

APScheduler's own `CronTrigger.from_crontab` numbers weekdays from Monday (0 = Monday), where cron
numbers them from Sunday (0 and 7 = Sunday), so `0 3 * * 1-5` would run Tuesday to Saturday; and
it requires both a restricted day of month and a restricted day of week, where cron runs on
either. Here the day-of-week field is rewritten as day names, and restricting both is refused.
Refused too, each error naming the field and the whole expression: a value out of a field's range,
an empty step (`*/`), and a schedule that never fires (`0 0 30 2 *`), which would otherwise idle a
scheduler forever. Defined beside the settings, which check `training.schedule` at load with it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from apscheduler.triggers.cron import CronTrigger

CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering: 0 (and 7) is Sunday
#: The five fields in crontab order: APScheduler's name, and the name an error gives.
FIELDS = (("minute", "minute"), ("hour", "hour"), ("day", "day of month"), ("month", "month"),
          ("day_of_week", "day of week"))  # fmt: skip


def cron_trigger(expression: str) -> CronTrigger:
    """The trigger of `minute hour day-of-month month day-of-week`, in UTC (ValueError when invalid)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expression!r}: 5 fields expected (minute hour day-of-month month day-of-week)")
    for (_, label), field in zip(FIELDS, fields):
        _check_steps(field, label, expression)
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        raise ValueError(f"cron {expression!r}: cron runs when either the day of month or the day of week matches, "
                         "this scheduler only when both do: restrict one of them")
    values = dict(zip((name for name, _ in FIELDS), (minute, hour, day, month, _weekdays(weekday, expression))))
    for name, label in FIELDS:
        _check_field(name, values[name], label, expression)
    trigger = CronTrigger(**values, timezone="UTC")
    if trigger.get_next_fire_time(None, datetime.now(timezone.utc)) is None:
        raise ValueError(f"cron {expression!r} never fires: none of its months has that day of month")
    return trigger


def _check_steps(field: str, label: str, expression: str) -> None:
    for part in field.split(","):
        if "/" in part and not part.partition("/")[2]:
            raise ValueError(f"cron {expression!r}: empty step in the {label} field ({part!r})")


def _check_field(name: str, value: str, label: str, expression: str) -> None:
    """APScheduler's error for one field, with the field's name and the whole expression."""
    try:
        CronTrigger(**{name: value}, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"cron {expression!r}: invalid {label} field {value!r}: {exc}") from None


def _weekdays(field: str, expression: str) -> str:
    """Cron's day-of-week field as the comma-separated day names APScheduler reads unambiguously."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise _bad_weekday(field, expression, f"bad step {step!r}")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (_day(token, field, expression) for token in span.split("-", 1))
        else:
            first = _day(span, field, expression)
            last = 6 if step else first
        if first > last:
            raise _bad_weekday(field, expression, f"range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, int(step or 1)))
    return ",".join(CRON_DAYS[day] for day in sorted(days))


def _day(token: str, field: str, expression: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token.lower() in CRON_DAYS:
        return CRON_DAYS.index(token.lower())
    raise _bad_weekday(field, expression, f"{token!r} is not a day of week (0-7, 0 and 7 Sunday, or sun-sat)")


def _bad_weekday(field: str, expression: str, why: str) -> ValueError:
    return ValueError(f"cron {expression!r}: invalid day of week field {field!r}: {why}")
