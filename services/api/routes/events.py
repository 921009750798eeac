"""`POST /v1/events`: a batch of events, validated one by one, durable before the 202."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, status
from pydantic import ValidationError

from feature_store.schemas import Event
from services.api.deps import RequestIdDep, StateDep, WriteAccess
from services.api.errors import ApiError, ServiceUnavailableError
from services.api.schemas import EventReject, EventsResponse
from services.api.state import ServiceState
from services.recommend.types import DegradedError

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[WriteAccess])

EXAMPLE = [{
    "event_id": "e-1", "user_id": "196", "item_id": "242", "type": "click", "ts": "2024-05-01T12:00:00Z",
    "context": {"request_id": "6f1c0a", "position": 0, "page": "home"},
}]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=EventsResponse)
def post_events(
    events: Annotated[list[Any], Body(description="A JSON array of events (schema: feature_store Event)",
                                      examples=[EXAMPLE])],
    state: StateDep,
    request_id: RequestIdDep,
) -> EventsResponse:
    """Append events to the event log (fsynced before the answer) and update live features.

    Each element is validated on its own: bad ones are listed in `rejected` with their index and
    errors, good ones are kept. An `event_id` seen before is counted in `duplicates` and not
    applied again.
    """
    limit = state.settings.api.max_events_per_request
    if len(events) > limit:
        raise ApiError(f"too many events: {len(events)} > {limit} per request; split the batch")
    valid, rejected = _validate(events, state.settings.events.max_future_skew_s)
    unseen = _drop_duplicates(state, valid)
    try:
        state.event_log.append(unseen)
    except OSError as exc:
        state.metrics.errors.labels(kind="event_log").inc()
        raise ServiceUnavailableError("event log write failed; nothing was accepted, retry the batch") from exc
    fresh = _claim(state, unseen)
    duplicates = len(valid) - len(fresh)
    degraded = _apply_live(state, fresh)
    state.metrics.events.labels(outcome="accepted").inc(len(fresh))
    state.metrics.events.labels(outcome="duplicate").inc(duplicates)
    state.metrics.events.labels(outcome="rejected").inc(len(rejected))
    return EventsResponse(
        accepted=len(fresh), duplicates=duplicates, rejected=rejected, degraded=degraded, request_id=request_id
    )


def _validate(raw_events: list[Any], max_future_skew_s: float) -> tuple[list[Event], list[EventReject]]:
    """Events that pass the schema and are not dated beyond the clock skew allowance, and the rest."""
    latest = datetime.now(timezone.utc) + timedelta(seconds=max_future_skew_s)
    valid: list[Event] = []
    rejected: list[EventReject] = []
    for index, raw in enumerate(raw_events):
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            errors = [
                {"location": ".".join(str(p) for p in e["loc"]) or "event", "message": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
            rejected.append(EventReject(index=index, errors=errors))
            continue
        if event.ts > latest:
            # Trusting a future time would move the batch watermark past every live event to come.
            message = (f"ts {event.ts.isoformat()} is more than {max_future_skew_s:g} s ahead of the server clock "
                       "(events.max_future_skew_s): send the time the event happened")
            rejected.append(EventReject(index=index, errors=[{"location": "ts", "message": message, "type": "future_ts"}]))
        else:
            valid.append(event)
    return valid, rejected


def _drop_duplicates(state: ServiceState, events: list[Event]) -> list[Event]:
    """Drop repeats inside the batch and event ids accepted before (when Redis can tell), so
    retries do not grow the log; concurrent posts of one id may both pass: `_claim` decides."""
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    try:
        seen = state.store.already_applied(list(unique))
    except DegradedError:
        seen = set()  # accept: event log readers drop duplicate event ids anyway
    return [event for event_id, event in unique.items() if event_id not in seen]


def _claim(state: ServiceState, events: list[Event]) -> list[Event]:
    """The events this request is first to accept (one atomic claim per event id, made after the
    append, so an id is only ever reported as a duplicate once it is durable)."""
    try:
        claimed = state.store.claim_events([event.event_id for event in events])
    except DegradedError:
        return events  # cannot tell: count them accepted (readers drop duplicate event ids)
    return [event for event in events if event.event_id in claimed]


def _apply_live(state: ServiceState, events: list[Event]) -> bool:
    """Push events to the live sequence and popularity; returns True if Redis was unreachable."""
    try:
        state.store.apply_events(events)
    except DegradedError:
        state.metrics.errors.labels(kind="live_update").inc()
        return True
    return False
