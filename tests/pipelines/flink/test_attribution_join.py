"""The stream job's join logic without Flink: events arriving out of order (jittered, or whole
files read in another order, as the file source does after a restart), a simulated watermark and
event-time timers, a real Redis store; the counts equal the rule's oracle (`reference_counts`)
whatever the arrival order within the allowed lateness."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis

from feature_store.attribution import Dimension, Impression, Outcome, attribute, is_outcome, reference_counts
from feature_store.definitions import join_key
from feature_store.attribution_store import CreditRecord, RecordResult, RedisAttributionStore
from feature_store.redis_client import ConnectionSpec
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from pipelines.flink.features import is_too_late
from pipelines.flink.join import TIMER_GRID_MS, AttributionJoin, DictMap, KeyMaps, timer_at
from pipelines.flink.sink import record_kind

WINDOW_MS = 10 * 60_000
OUT_OF_ORDERNESS_MS = 5_000
LATENESS_MS = 60 * 60_000


@pytest.fixture
def store(settings: Settings, redis_client: redis.Redis) -> Iterator[RedisAttributionStore]:
    store = RedisAttributionStore(ConnectionSpec(settings.redis.url or ""), 2 * 86400, 900)
    yield store
    store.close()


def make_log(seed: int, start: datetime) -> list[Event]:
    rng = random.Random(seed)
    events, requests = [], []
    for k in range(600):
        at = start + timedelta(milliseconds=k * 3000 + rng.randrange(3000))
        user, item = f"u{rng.randrange(3)}", f"i{rng.randrange(4)}"
        if rng.random() < 0.5:
            request = f"r{k}"
            requests.append((request, user, item))
            context = {"request_id": request, "position": rng.randrange(3), "policy": "p", "arm": rng.choice("AB")}
            events.append(Event.model_validate({"event_id": f"e{k}", "user_id": user, "item_id": item,
                                                "type": "impression", "ts": at.isoformat(), "context": context}))
            continue
        kind = rng.choice(["click", "click", "purchase", "rating"])
        context = {}
        if requests and rng.random() < 0.7:
            request, user, item = rng.choice(requests[-8:])  # a recent request's item
            context = {"request_id": request if rng.random() < 0.9 else "unknown"}
        events.append(Event.model_validate({"event_id": f"e{k}", "user_id": user, "item_id": item, "type": kind,
                                            "value": 4.0 if kind == "rating" else None, "ts": at.isoformat(),
                                            "context": context}))
    return events


def arrival_order(events: list[Event], seed: int) -> list[Event]:
    """Jittered by up to the out-of-orderness, then in four "files" of which the middle two swap."""
    rng = random.Random(seed)
    jittered = sorted(events, key=lambda e: Impression.of(e).ts_ms + rng.randrange(OUT_OF_ORDERNESS_MS))
    quarter = len(jittered) // 4
    return jittered[:quarter] + jittered[2 * quarter:3 * quarter] + jittered[quarter:2 * quarter] + jittered[3 * quarter:]


def run_join(store: RedisAttributionStore, events: list[Event], seed: int) -> Counter[str]:
    """Feed `events` out of order with a bounded-out-of-orderness watermark and event-time timers,
    writing the join's records after each step as the job does; returns the store's results."""
    join, results = AttributionJoin(WINDOW_MS, LATENESS_MS), Counter[str]()

    def write() -> None:
        records = join.drain()
        results.update(f"{record_kind(r)}_{result}" for r, result in zip(records, store.record_many(records)))
    arrival = arrival_order(events, seed)
    assert arrival != sorted(events, key=lambda e: Impression.of(e).ts_ms)
    states: dict[str, KeyMaps] = {}  # each key's maps, as the job keeps them
    timers: set[tuple[int, str]] = set()
    newest = -(2**62)

    def advance(watermark: int) -> None:
        for when, key in sorted(t for t in timers if t[0] <= watermark):
            timers.discard((when, key))
            join.fire(when, states[key])
            write()

    for event in arrival:
        assert Impression.of(event).ts_ms >= newest - OUT_OF_ORDERNESS_MS - 1 - LATENESS_MS, "too late: not fed"
        key = join_key(event.user_id, event.item_id)
        state = states.setdefault(key, KeyMaps.in_memory())
        if event.type is EventType.IMPRESSION:
            when = join.impression(Impression.of(event), state)
        elif is_outcome(event):
            when = join.outcome(Outcome.of(event), state)
        else:
            when = None
        if when is not None:
            timers.add((when, key))
        write()
        newest = max(newest, Impression.of(event).ts_ms)
        advance(newest - OUT_OF_ORDERNESS_MS - 1)
    advance(2**62)
    assert not any(s.pending.items() for s in states.values()), "outcomes left undecided"
    return results


def stored(store: RedisAttributionStore) -> dict[tuple[str, str, int, str], int]:
    return {(r.dimension, r.key, r.bucket_ms, r.measure): r.value for d in Dimension.ALL for r in store.scan_counts(d)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counts_equal_the_oracle_whatever_the_arrival_order(store: RedisAttributionStore, seed: int) -> None:
    events = make_log(seed, datetime.now(timezone.utc) - timedelta(hours=1))
    results = run_join(store, events, seed)
    expected = reference_counts(events, WINDOW_MS)
    assert sum(n for k, n in expected.items() if k[3] == "click") > 20
    assert stored(store) == expected
    assert results["unattributed_applied"] > 0 and results["credit_applied"] > 0
    run_join(store, events, seed + 100)  # a replay in another order adds nothing
    assert stored(store) == expected


def test_an_outcome_logged_before_its_impression_is_still_credited(store: RedisAttributionStore) -> None:
    t0 = datetime.now(timezone.utc)
    shown = Event.model_validate({"event_id": "imp", "user_id": "u", "item_id": "i", "type": "impression",
                                  "ts": t0.isoformat(), "context": {"request_id": "r", "position": 1}})
    click = Event.model_validate({"event_id": "c", "user_id": "u", "item_id": "i", "type": "click",
                                  "ts": (t0 + timedelta(seconds=1)).isoformat(), "context": {"request_id": "r"}})
    join, state = AttributionJoin(WINDOW_MS, LATENESS_MS), KeyMaps.in_memory()
    assert join.outcome(Outcome.of(click), state) == timer_at(Outcome.of(click).ts_ms + LATENESS_MS + 1)  # parked
    join.impression(Impression.of(shown), state)
    records = join.drain()
    assert not state.pending.items() and [record_kind(r) for r in records] == ["impression", "credit"]  # at once
    assert store.record_many(records) == [RecordResult.APPLIED, RecordResult.APPLIED]
    assert store.counts(Dimension.ITEM_POSITION, join_key("i", "1"), 0, 2**62) == {"impression": 1, "click": 1}


def test_an_impression_at_the_lateness_edge_still_wins_the_outcome() -> None:
    """A click without request id at t; the watermark reaches exactly t + allowed lateness; then an
    impression at t arrives. It is not too late (it is not older than watermark - lateness), so the
    click must still be undecided and go to it, the latest candidate, as the rule and Spark say."""
    t0 = datetime.now(timezone.utc)

    def event(event_id: str, kind: str, minutes: int) -> Event:
        return Event.model_validate({"event_id": event_id, "user_id": "u", "item_id": "i", "type": kind,
                                     "ts": (t0 + timedelta(minutes=minutes)).isoformat()})

    old, click, new = event("old", "impression", -10), event("c", "click", 0), event("new", "impression", 0)
    t = Outcome.of(click).ts_ms
    join, state = AttributionJoin(WINDOW_MS, LATENESS_MS), KeyMaps.in_memory()
    join.impression(Impression.of(old), state)
    timer = join.outcome(Outcome.of(click), state)
    watermark = t + LATENESS_MS
    assert timer is not None
    if timer <= watermark:
        join.fire(timer, state)  # what Flink does once the watermark reaches the timer
    assert not is_too_late(Impression.of(new).ts_ms, watermark, LATENESS_MS)
    join.impression(Impression.of(new), state)
    join.fire(timer, state)
    credits = [r for r in join.drain() if isinstance(r, CreditRecord)]
    assert [(r.impression.event_id, r.outcome.event_id) for r in credits] == [("new", "c")]
    assert is_too_late(Impression.of(new).ts_ms, timer, LATENESS_MS), "decided when it would be too late"


class CountingMap(DictMap):
    """A key's map that counts its reads (in the job each read of an uncached key is a blocking
    request to the JVM, what capped the job's capacity)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, key: str) -> str | None:
        self.reads += 1
        return super().get(key)

    def items(self) -> list[tuple[str, str]]:
        self.reads += 1
        return list(super().items())


def test_impressions_read_no_state_unless_an_outcome_of_their_key_waits() -> None:
    t0 = datetime.now(timezone.utc)

    def event(event_id: str, kind: str, seconds: int, request: str | None, item: str = "i") -> Event:
        return Event.model_validate({"event_id": event_id, "user_id": "u", "item_id": item, "type": kind,
                                     "ts": (t0 + timedelta(seconds=seconds)).isoformat(), "context": {"request_id": request}})

    join = AttributionJoin(WINDOW_MS, LATENESS_MS)
    state = KeyMaps(CountingMap(), CountingMap(), CountingMap())
    maps = (state.impressions, state.pending, state.credits)
    assert join.impression(Impression.of(event("a", "impression", 0, "r1")), state) is None  # no timer either
    assert [m.reads for m in maps] == [0, 0, 0]
    assert join.outcome(Outcome.of(event("c1", "click", 1, "r1")), state) is None  # credited at once
    assert [m.reads for m in maps] == [1, 0, 0]
    join.outcome(Outcome.of(event("c2", "click", 2, "r2")), state)  # its impression comes later: parked
    join.impression(Impression.of(event("b", "impression", 1, "r2")), state)  # reads pending, credits c2
    assert state.pending.reads == 1 and not state.pending.items()
    other = KeyMaps(CountingMap(), CountingMap(), CountingMap())
    join.impression(Impression.of(event("x", "impression", 0, "r3", item="j")), other)  # another key
    assert [m.reads for m in (other.impressions, other.pending, other.credits)] == [0, 0, 0]
    assert [record_kind(r) for r in join.drain()] == ["impression", "credit", "impression", "credit", "impression"]


def test_a_keys_outcomes_share_timers_on_the_grid_and_are_decided_as_the_rule_says() -> None:
    """A client clicking one item ten times a second without request ids: with a timer each, every
    timer was a pass over all the key's pending outcomes (8,000 clicks: 106 s against 0.2 s spread
    over keys). On the grid, a key's outcomes share a timer per step, and each is still decided as
    `attribute` decides it over the impressions of the key."""
    t0 = 1_796_600_000_000
    join, state = AttributionJoin(WINDOW_MS, LATENESS_MS), KeyMaps.in_memory()
    shown = [Impression(f"imp{n}", "u", "i", t0 + n * 60_000, None, n, None, None, None) for n in range(3)]
    for impression in shown:
        join.impression(impression, state)
    clicks = [Outcome(f"c{n}", "u", "i", "click", t0 + n * 100, None) for n in range(2_000)]
    decide_at = [join.outcome(click, state) for click in clicks]
    timers = set(decide_at)
    assert len(timers) == 200_000 // TIMER_GRID_MS and all(at % TIMER_GRID_MS == 0 for at in timers)  # type: ignore[operator]
    assert all(0 <= at - (click.ts_ms + LATENESS_MS + 1) < TIMER_GRID_MS for click, at in zip(clicks, decide_at))  # type: ignore[operator]
    join.drain()
    for at in sorted(timers):  # type: ignore[type-var]
        join.fire(at, state)
    credited = {record.outcome.event_id: record.impression.event_id for record in join.drain() if record_kind(record) == "credit"}
    expected = {click.event_id: attribute(click, shown, WINDOW_MS).event_id for click in clicks}  # type: ignore[union-attr]
    assert credited == expected and not state.pending.items()
