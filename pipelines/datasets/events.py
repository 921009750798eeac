"""Building `Event` objects in bulk from fields the importer has already validated.

`Event.model_construct` skips pydantic validation (about 3x faster per event); it is only used on
values our own parsers or generator produced, which are valid by construction. Passing
`_fields_set` makes serialization identical to a validated event.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

from feature_store.schemas import MAX_ID_LENGTH, Event, EventContext, EventType

_EVENT_FIELDS = frozenset(Event.model_fields)
_CONTEXT_FIELDS = frozenset(EventContext.model_fields)
_EMPTY_CONTEXT = EventContext()
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def import_event_id(dataset: str, user_id: str, item_id: str, ts: float, type: EventType = EventType.RATING) -> str:
    """The id of an imported interaction: `<dataset>:<user>:<item>:<ts>`, so a re-import writes
    nothing new; `ts` in unix seconds, with its milliseconds where it has any (`1700000000.25`):
    a whole second is written as before, so ids of earlier imports stay. An event of another type than a rating or a click ends in `:<type>`: a purchase
    and a view of the same item in the same second, imported from two files under one `--dataset`
    name, are two events, not one dropped as the other's duplicate (ratings and clicks keep the
    ids they were imported under before types were part of it). Where that is ambiguous (a `:` in
    the user or item id: `a:1` + `b` and `a` + `1:b` would share it) or longer than an event id may
    be, `<dataset>:#<hash of the fields>` instead; its last field starts with `#`, never a digit or
    a type's letter, so it cannot equal a plain id."""
    typed = type not in (EventType.RATING, EventType.CLICK)
    ts = round(float(ts), 3)
    ts = int(ts) if ts.is_integer() else ts
    plain = f"{dataset}:{user_id}:{item_id}:{ts}" + (f":{type.value}" if typed else "")
    if ":" not in user_id and ":" not in item_id and len(plain) <= MAX_ID_LENGTH:
        return plain
    fields = [dataset, user_id, item_id, ts] + ([type.value] if typed else [])
    digest = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:40]
    return f"{dataset[: MAX_ID_LENGTH - 42]}:#{digest}"


def trusted_event(
    event_id: str,
    user_id: str,
    item_id: str,
    type: EventType,
    ts: float,
    value: float | None = None,
    request_id: str | None = None,
    position: int | None = None,
) -> Event:
    """An `Event` at unix time `ts` in seconds (UTC), without re-validating already valid fields."""
    if request_id is None and position is None:
        context = _EMPTY_CONTEXT
    else:
        context = EventContext.model_construct(
            _fields_set=_CONTEXT_FIELDS, request_id=request_id, position=position, page=None, experiment=None, arm=None
        )
    return Event.model_construct(
        _fields_set=_EVENT_FIELDS,
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        type=type,
        value=value,
        ts=EPOCH + timedelta(milliseconds=round(ts * 1000)),  # exact to the ms, where a float's microseconds may fall short
        context=context,
    )
