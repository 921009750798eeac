"""A generated event log with planted outcomes for the attribution tests (Spark job and the
Spark-vs-speed-layer check): impressions with and without request ids, positions (some past the
counted ones) and policies (ids holding the key separators, learner revisions), outcomes of every attributed type at planted delays (inside, at
and past the window, before the impression) with their own, no, an unknown or another request's
id, a slot clicked three times, a non-outcome, duplicates, all shuffled."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from feature_store.schemas import Event, EventContext, EventType

WINDOW_S = 1800
OUTCOMES = [EventType.CLICK, EventType.LIKE, EventType.ADD_TO_CART, EventType.PURCHASE]
POLICIES = ["ranker-v1/greedy", "ranker-v2|eps%0.1", None, ""]  # '|' and '%' must stay apart in keys
# Two online learner revisions of one base (counted as one policy, `attribution.counted_policy`).
REVISIONS = ["ranker=v3@r12-3fa9c1;explore=learner:r12-3fa9c1", "ranker=v3@r13-00beef;explore=learner:r13-00beef"]


def _impressions(rng: random.Random, start: datetime) -> list[Event]:
    """60 requests of 4 slots by 5 users over 6 items, in the 3 hours after `start`; some without
    request id or position; two requests at the very same instant (ties are broken by event id)."""
    events = []
    for r in range(60):
        user, shown = f"u{rng.randrange(5)}", rng.sample(range(6), 4)
        at = start + timedelta(seconds=rng.randrange(3 * 3600)) if r != 59 else events[0].ts
        request_id = None if r % 9 == 0 else f"r{r}"
        policy = REVISIONS[r % 2] if r % 10 == 3 else rng.choice(POLICIES)
        first = 250 if r % 11 == 5 else 0  # a client's deep slots: counted at `MAX_COUNTED_POSITION`
        for slot, item in enumerate(shown):
            context = EventContext(
                request_id=request_id, position=None if r % 13 == 0 else first + slot, page="home", policy=policy,
                propensity=rng.choice([1.0, 0.25]), experiment="exp1" if policy else None,
                arm=rng.choice(["a", "b", None]), team=rng.choice(["t1", None]), model_versions={"ranker": "7"},
            )  # fmt: skip
            user_id = events[0].user_id if r == 59 else user
            events.append(Event(event_id=f"imp-{r}-{slot}", user_id=user_id, item_id=f"i{item}", type=EventType.IMPRESSION,
                                ts=at, context=context))  # fmt: skip
    return events


def _outcomes(rng: random.Random, impressions: list[Event]) -> list[Event]:
    """Outcomes at planted delays after random impressions: inside, at and past the window, before
    the impression; with the impression's request id, none, an unknown one or another request's."""
    delays = [0, 1, 45, 600, WINDOW_S, WINDOW_S + 1, 2 * WINDOW_S, -30]
    events = []
    for n in range(160):
        target = rng.choice(impressions)
        request = rng.choice(["own", "own", "none", "unknown", "other"])
        request_id = {"own": target.context.request_id, "none": None, "unknown": "r-unknown",
                      "other": f"r{rng.randrange(60)}"}[request]  # fmt: skip
        events.append(Event(
            event_id=f"out-{n}", user_id=target.user_id, item_id=target.item_id, type=rng.choice(OUTCOMES),
            ts=target.ts + timedelta(seconds=rng.choice(delays), milliseconds=rng.choice([0, 0, 250])),
            context=EventContext(request_id=request_id),
        ))  # fmt: skip
    first = impressions[0]
    for n in range(3):  # one slot clicked three times: one click
        events.append(Event(event_id=f"again-{n}", user_id=first.user_id, item_id=first.item_id, type=EventType.CLICK,
                            ts=first.ts + timedelta(seconds=10 * n), context=EventContext(request_id=first.context.request_id)))
    # not outcomes: a rating and an impression-like view never count
    events.append(Event(event_id="rating-1", user_id=first.user_id, item_id=first.item_id, type=EventType.RATING,
                        value=4.0, ts=first.ts + timedelta(seconds=5)))  # fmt: skip
    return events


def planted_log(start: datetime, seed: int = 14) -> list[Event]:
    """The log's events in a shuffled order, 30 of them twice (same event id)."""
    rng = random.Random(seed)
    impressions = _impressions(rng, start)
    events = impressions + _outcomes(rng, impressions)
    events += rng.sample(events, 30)
    rng.shuffle(events)
    return events
