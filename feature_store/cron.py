"""Standard 5-field crontab expressions (UTC) as APScheduler 3 triggers, read as cron reads them.

APScheduler's own `CronTrigger.from_crontab` numbers weekdays from Monday (0 = Monday), where cron
numbers them from Sunday (0 and 7 = Sunday), so `0 3 * * 1-5` would run Tuesday to Saturday; and
it requires both a restricted day of month and a restricted day of week, where cron runs on
either. Here the day-of-week field is rewritten as day names, and restricting both is refused.
Defined beside the settings, which check `training.schedule` at load with it.
"""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering: 0 (and 7) is Sunday


def cron_trigger(expression: str) -> CronTrigger:
    """The trigger of `minute hour day-of-month month day-of-week`, in UTC (ValueError when invalid)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expression!r}: 5 fields expected (minute hour day-of-month month day-of-week)")
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        raise ValueError(f"cron {expression!r}: cron runs when either the day of month or the day of week matches, "
                         "this scheduler only when both do: restrict one of them")
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_weekdays(weekday, expression),
                       timezone="UTC")  # fmt: skip


def _weekdays(field: str, expression: str) -> str:
    """Cron's day-of-week field as the comma-separated day names APScheduler reads unambiguously."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise ValueError(f"cron {expression!r}: bad step {step!r} in the day of week")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            first, last = (_day(token, expression) for token in span.split("-", 1))
        else:
            first = _day(span, expression)
            last = 6 if step else first
        if first > last:
            raise ValueError(f"cron {expression!r}: day-of-week range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, int(step or 1)))
    return ",".join(CRON_DAYS[day] for day in sorted(days))


def _day(token: str, expression: str) -> int:
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    if token.lower() in CRON_DAYS:
        return CRON_DAYS.index(token.lower())
    raise ValueError(f"cron {expression!r}: {token!r} is not a day of week (0-7, 0 and 7 Sunday, or sun-sat)")
