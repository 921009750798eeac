"""Event intake: the one path by which events enter the event log and the live features.

Used by `POST /v1/events` for posted batches and by the impression logger for served lists:
drop repeats of an `event_id` (within the batch, and ids accepted before), append the rest to the
event log (durable on return), claim each appended id with a `SET NX` marker so that of concurrent
writers of one id exactly one counts it, then apply the claimed events' live features. Claiming
after the append means an id is never called a duplicate before it is durable.

Events the server makes itself (impressions: ids unique unless a request is retried) skip the
claim markers (`claim=False`): those cost two Redis round trips and a key per event for
`feature_store.dedup_ttl_s`, as much as the live write itself; the live writer's replay markers
still apply each id once and count the repeats (a client posting such an id again is told it
is a duplicate within their window), and log readers drop repeated ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feature_store.event_log import EventLog
from feature_store.schemas import Event
from services.recommend.online_store import ServingStore
from services.recommend.types import DegradedError


@dataclass(frozen=True)
class IntakeResult:
    accepted: int  # new events, durably appended and first claimed by this call
    duplicates: int  # events whose id was accepted before (or by a concurrent call)
    degraded: bool  # Redis was unreachable: live features wait for the next batch run


def ingest(store: ServingStore, event_log: EventLog, events: Sequence[Event], claim: bool = True) -> IntakeResult:
    """Append `events` and apply their live features, once per `event_id`; `claim=False` for
    server-made events (no claim markers: see above).

    Raises `OSError` when the log append fails; then nothing of the batch was accepted.
    """
    if not claim:
        event_log.append(events)
        try:
            repeats = store.apply_events(events).duplicates
        except DegradedError:
            return IntakeResult(len(events), 0, True)
        return IntakeResult(len(events) - repeats, repeats, False)
    unseen = _drop_duplicates(store, events)
    event_log.append(unseen)
    fresh = _claim(store, unseen)
    try:
        # A replay the live writer caught is a duplicate too: a server-made impression (no claim
        # marker) that a client posts again.
        repeats, degraded = store.apply_events(fresh).duplicates, False
    except DegradedError:
        repeats, degraded = 0, True
    return IntakeResult(len(fresh) - repeats, len(events) - len(fresh) + repeats, degraded)


def _drop_duplicates(store: ServingStore, events: Sequence[Event]) -> list[Event]:
    """Drop repeats inside the batch and event ids accepted before (when Redis can tell), so
    retries do not grow the log; concurrent writers of one id may both pass: `_claim` decides."""
    unique: dict[str, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    try:
        seen = store.already_applied(list(unique))
    except DegradedError:
        seen = set()  # accept: event log readers drop duplicate event ids anyway
    return [event for event_id, event in unique.items() if event_id not in seen]


def _claim(store: ServingStore, events: list[Event]) -> list[Event]:
    """The events this call is first to accept (one atomic claim per event id)."""
    try:
        claimed = store.claim_events([event.event_id for event in events])
    except DegradedError:
        return events  # cannot tell: count them accepted (readers drop duplicate event ids)
    return [event for event in events if event.event_id in claimed]
