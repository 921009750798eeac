"""Pure helpers of the speed layer (no Flink), so they test in microseconds."""

from __future__ import annotations

from pydantic import ValidationError

from feature_store.schemas import Event


class BadEventLine(ValueError):
    """A line of the event log that is not a valid event."""


def parse_event_line(line: str) -> Event:
    """Validate one JSON line of the event log; raise `BadEventLine` saying what is wrong."""
    try:
        return Event.model_validate_json(line)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
        raise BadEventLine(f"{problems}; line: {line[:200]!r}") from exc


def too_late_from_ms(ts_ms: int, allowed_lateness_ms: int) -> int:
    """The first watermark at which an event at `ts_ms` is too late. The join decides what such an
    event could still change at this watermark, not before: an event that is not too late is never
    missed by a decision."""
    return ts_ms + allowed_lateness_ms + 1


def is_too_late(ts_ms: int, watermark_ms: int, allowed_lateness_ms: int) -> bool:
    """An event is too late when it is older than the watermark minus the allowed lateness."""
    return watermark_ms >= too_late_from_ms(ts_ms, allowed_lateness_ms)


def is_in_the_future(ts_ms: int, now_ms: int, max_future_skew_ms: int) -> bool:
    """An event is from the future when its time is more than the clock skew allowance ahead of now."""
    return ts_ms > now_ms + max_future_skew_ms
