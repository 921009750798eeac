"""The attribution rule on planted logs: every branch of the rule, and the counts it implies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from feature_store.attribution import (
    BUCKET_MS,
    Dimension,
    Impression,
    Outcome,
    attribute,
    event_ms,
    join_key,
    reference_counts,
)
from feature_store.schemas import Event

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
WINDOW_MS = 30 * 60_000


def event(event_id: str, kind: str, minutes: float, item: str = "i1", user: str = "u1", **context: object) -> Event:
    return Event.model_validate({
        "event_id": event_id, "user_id": user, "item_id": item, "type": kind,
        "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "context": context,
    })


def test_request_id_picks_its_own_impression_even_when_an_other_is_later() -> None:
    shown = [Impression.of(event("a", "impression", 0, request_id="r1", position=2)),
             Impression.of(event("b", "impression", 5, request_id="r2", position=0))]
    click = Outcome.of(event("c", "click", 6, request_id="r1"))
    assert attribute(click, shown, WINDOW_MS).event_id == "a"


def test_unknown_request_id_stays_unattributed() -> None:
    shown = [Impression.of(event("a", "impression", 0, request_id="r1"))]
    assert attribute(Outcome.of(event("c", "click", 1, request_id="nope")), shown, WINDOW_MS) is None


def test_without_request_id_the_latest_impression_in_the_window_wins() -> None:
    shown = [Impression.of(event("a", "impression", 0)), Impression.of(event("b", "impression", 10)),
             Impression.of(event("later", "impression", 12)), Impression.of(event("other", "impression", 9, item="i2"))]
    assert attribute(Outcome.of(event("c", "click", 11)), shown, WINDOW_MS).event_id == "b"


def test_window_bounds_are_inclusive_and_future_impressions_never_match() -> None:
    shown = [Impression.of(event("a", "impression", 0))]
    assert attribute(Outcome.of(event("c", "click", 30)), shown, WINDOW_MS).event_id == "a"
    assert attribute(Outcome.of(event("c", "click", 30.001)), shown, WINDOW_MS) is None
    assert attribute(Outcome.of(event("c", "click", -0.001)), shown, WINDOW_MS) is None


def test_counts_credit_one_outcome_per_type_per_impression_in_the_impression_hour() -> None:
    log = [
        event("a", "impression", 55, request_id="r1", position=1, policy="greedy", arm="B"),
        event("a", "impression", 55, request_id="r1", position=1, policy="greedy", arm="B"),  # duplicate id
        event("c1", "click", 70, request_id="r1"),
        event("c2", "click", 71, request_id="r1"),  # second click on the same slot: not counted
        event("p", "purchase", 72, request_id="r1"),
        event("late", "click", 200, request_id="r1"),  # past the window: unattributed
        event("x", "impression", 5, item="i2", position=0),
    ]
    counts = reference_counts(log, WINDOW_MS)
    hour = int(T0.timestamp() * 1000)
    assert hour % BUCKET_MS == 0
    expected = {}
    for dimension, key in [(Dimension.ITEM, "i1"), (Dimension.ITEM_POSITION, "i1|1"), (Dimension.POSITION, "1"),
                           (Dimension.POLICY_ARM, "greedy|B")]:
        expected.update({(dimension, key, hour, m): 1 for m in ("impression", "click", "purchase")})
    for dimension, key in [(Dimension.ITEM, "i2"), (Dimension.ITEM_POSITION, "i2|0"), (Dimension.POSITION, "0"),
                           (Dimension.POLICY_ARM, "-|-")]:
        expected[(dimension, key, hour, "impression")] = 1
    expected[(Dimension.POSITION, "1", hour, "impression")] = 1
    assert counts == expected


def test_join_key_is_injective_on_separators() -> None:
    assert join_key("a|b", "c") != join_key("a", "b|c")
    assert join_key("a%7Cb", "c") != join_key("a|b", "c")


def test_event_ms_floors_exactly_as_spark_unix_millis() -> None:
    """Float arithmetic (`ts.timestamp() * 1000`) gives 1076226594836 for the first (rounding) and
    -0 for the second (truncating toward zero); Spark's `unix_millis` floors the exact value."""
    def at(ts: str) -> int:
        return event_ms(Event.model_validate({"event_id": "e", "user_id": "u", "item_id": "i", "type": "click", "ts": ts}))

    assert at("2004-02-08T07:49:54.837Z") == 1_076_226_594_837
    assert at("1969-12-31T23:59:59.9995Z") == -1
    assert at("1970-01-01T00:00:00Z") == 0
