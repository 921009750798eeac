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
from services.recommend.intake import ingest

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
    try:
        result = ingest(state.store, state.event_log, valid)
    except OSError as exc:
        state.metrics.errors.labels(kind="event_log").inc()
        raise ServiceUnavailableError("event log write failed; nothing was accepted, retry the batch") from exc
    if result.degraded:
        state.metrics.errors.labels(kind="live_update").inc()
    state.metrics.events.labels(outcome="accepted").inc(result.accepted)
    state.metrics.events.labels(outcome="duplicate").inc(result.duplicates)
    state.metrics.events.labels(outcome="rejected").inc(len(rejected))
    return EventsResponse(
        accepted=result.accepted, duplicates=result.duplicates, rejected=rejected, degraded=result.degraded,
        request_id=request_id,
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
