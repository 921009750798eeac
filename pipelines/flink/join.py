"""The attribution join of one (user, item) key, as the stream job runs it, without Flink.

`AttributionJoin` keeps a key's state in three maps (`KeyMaps`; Flink `MapState`s in the job, plain
dicts in tests) and applies `feature_store.attribution.attribute`, the rule every engine implements:

- `impressions`: the key's impressions, under their request id (`r:<request id>`) or, without one,
  their event id (`e:<event id>`). Written, never read, when an impression arrives: in PyFlink a
  read of a key not in the Python worker's cache is a blocking request to the JVM, and nearly
  every impression opens a new (user, item) key, while a write waits in the worker's write cache
  until the bundle ends. A request shows an item once, so one entry per request suffices; a client
  retry (same event id) rewrites the same entry;
- `pending`: outcome event id -> an outcome not decided yet;
- `credits`: `<impression event id>\\x1f<outcome type>` for the impressions the join must act on
  when they leave the state (those LinUCB served), so that it knows their reward then.

When an outcome is decided:

- with a request id: as soon as that request's impression is in state (one map read, usually
  served by the worker's cache, since a click follows its impression closely), else when the
  watermark passes the outcome's time plus the allowed lateness (an impression arriving before
  that still matches it: the outcome waits in `pending`); then it is unattributed if nothing
  matched;
- without a request id: always when the watermark passes the outcome's time plus the allowed
  lateness, since the latest impression wins and a later one (in event time, up to the outcome's)
  may still arrive: after that, any such impression would be too late for the job anyway.

An impression credits the pending outcomes of its request at once, if its key is one the join saw
park such an outcome (`awaiting`, in this worker's memory, so an impression reads `pending` only
when something may wait there). After a restart that memory is empty: an outcome parked before
the restart is then decided by its timer instead (the same decision, later).

Impressions leave the state by the job's state TTL (processing time, twice the time they are
needed), or, for a key that has a timer anyway, when the watermark passes `ts + window + allowed
lateness` (no outcome that is not too late can match them after that). One that LinUCB served
gets a timer of its own for that moment: the join then adds it to the item's LinUCB statistics
(`feature_store.linucb_store`): the context its request saved, reward 1 if a click was credited
to it, else 0, once per impression (the store's replay marker).

So a decision never depends on the order in which events arrive (the event log's files are read
in no particular order after a restart or a pause), only on which events are within the allowed
lateness. Each decision becomes a record of the `AttributionStore` (`records`, drained by the
caller: the job writes them in batches, `pipelines.flink.sink`), whose replay markers make a second
application of the same decision (a replay after a restore) a no-op, and a different decision about
an event already decided (an outcome credited to another impression, or counted late, after a
restart; an impression dropped as too late) one too: the counts have an exactly-once effect.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Protocol

from feature_store.attribution import ATTRIBUTED_OUTCOMES, Impression, Outcome, attribute
from feature_store.attribution_store import (
    CreditRecord, ImpressionRecord, LateImpressionRecord, Miss, MissRecord, Record,
)
from feature_store.definitions import join_key
from feature_store.linucb_store import LinUcbStore, served_by_linucb
from feature_store.position_bias import CLICK
from pipelines.flink.features import too_late_from_ms


#: Decisions are made on a 10 s grid of watermark times (`timer_at`): they wait for the allowed
#: lateness (an hour by default) anyway.
TIMER_GRID_MS = 10_000


class StateMap(Protocol):
    """The part of Flink's `MapState[str, str]` the join uses."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...

    def remove(self, key: str) -> None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


class DictMap:
    """A `StateMap` in a dict (tests, and the join without Flink)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, value: str) -> None:
        self.data[key] = value

    def remove(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self.data.items())


@dataclass
class KeyMaps:
    """The state of one key."""

    impressions: StateMap
    pending: StateMap
    credits: StateMap

    @classmethod
    def in_memory(cls) -> "KeyMaps":
        return cls(DictMap(), DictMap(), DictMap())


def fields_of(record: Impression | Outcome) -> dict[str, object]:
    """The fields of a flat record (read-only): `dataclasses.asdict` deep-copies, which showed in
    the job's profile."""
    return vars(record)


def impression_ref(impression: Impression) -> str:
    """An impression's entry in `KeyMaps.impressions`."""
    return f"e:{impression.event_id}" if impression.request_id is None else f"r:{impression.request_id}"


class AttributionJoin:
    """Joins the impressions and outcomes of one key. What to count goes to `records` (see `drain`);
    `tally` counts what it did with LinUCB (for metrics)."""

    def __init__(self, window_ms: int, allowed_lateness_ms: int, linucb: LinUcbStore | None = None) -> None:
        self.records: list[Record] = []
        self.linucb = linucb
        self.window_ms = window_ms
        self.lateness_ms = allowed_lateness_ms
        self.tally: Counter[str] = Counter()
        self.awaiting: set[str] = set()  # keys whose `pending` may hold an outcome with a request id

    def impression(self, impression: Impression, state: KeyMaps) -> int | None:
        """Count `impression`, credit the pending outcomes of its request; returns when it needs a
        timer (it leaves the state then, and LinUCB learns from it), or None."""
        state.impressions.put(impression_ref(impression), json.dumps(fields_of(impression)))
        self.records.append(ImpressionRecord(impression))
        key = join_key(impression.user_id, impression.item_id)
        if impression.request_id is not None and key in self.awaiting:
            left = []
            for outcome in _outcomes(state.pending):
                if outcome.request_id == impression.request_id and attribute(outcome, [impression], self.window_ms):
                    self._credit(impression, outcome, state)
                    state.pending.remove(outcome.event_id)
                else:
                    left.append(outcome)
            self._update_awaiting(key, left)
        return self._past_use_at(impression) if self._learns(impression) else None

    def outcome(self, outcome: Outcome, state: KeyMaps) -> int | None:
        """Credit `outcome` now if its request's impression is known; else park it and return when
        to decide it (once the watermark passes its time plus the allowed lateness)."""
        if outcome.request_id is not None:
            found = state.impressions.get(f"r:{outcome.request_id}")
            target = found and attribute(outcome, [Impression(**json.loads(found))], self.window_ms)
            if target:
                self._credit(target, outcome, state)
                return None
            self.awaiting.add(join_key(outcome.user_id, outcome.item_id))
        state.pending.put(outcome.event_id, json.dumps(fields_of(outcome)))
        return self._decide_at(outcome)

    def fire(self, timestamp: int, state: KeyMaps) -> None:
        """The watermark reached `timestamp`: decide the outcomes up to it, drop impressions past use."""
        impressions = [Impression(**json.loads(value)) for _, value in state.impressions.items()]
        outcomes = _outcomes(state.pending)
        due = [o for o in outcomes if self._decide_at(o) <= timestamp]
        for outcome in due:
            target = attribute(outcome, impressions, self.window_ms)
            if target is None:
                self.records.append(MissRecord(outcome, Miss.UNATTRIBUTED))
            else:
                self._credit(target, outcome, state)
            state.pending.remove(outcome.event_id)
        for impression in impressions:
            if self._past_use_at(impression) <= timestamp:
                self._learn(impression, state.credits)
                state.impressions.remove(impression_ref(impression))
        if outcomes:
            decided = {o.event_id for o in due}
            left = [o for o in outcomes if o.event_id not in decided]
            self._update_awaiting(join_key(outcomes[0].user_id, outcomes[0].item_id), left)

    def late(self, event: Impression | Outcome) -> None:
        """An event too late for the speed layer, left to the batch layer: an outcome is counted
        late; an impression counts nothing, but is recorded as dropped, so that a replay after a
        restart, which may find it in time, does not count it."""
        if isinstance(event, Impression):
            self.records.append(LateImpressionRecord(event))
        else:
            self.records.append(MissRecord(event, Miss.LATE))

    def drain(self) -> list[Record]:
        """The records decided since the last drain, for the store."""
        records, self.records = self.records, []
        return records

    def _credit(self, impression: Impression, outcome: Outcome, state: KeyMaps) -> None:
        """Count `outcome` for `impression` (the store applies one outcome of each type per impression)."""
        self.records.append(CreditRecord(impression, outcome))
        if self._learns(impression):
            state.credits.put(f"{impression.event_id}\x1f{outcome.type}", "1")

    def _update_awaiting(self, key: str, left: list[Outcome]) -> None:
        """Forget `key` once none of the outcomes `left` in its state waits for a request's impression."""
        if not any(o.request_id is not None for o in left):
            self.awaiting.discard(key)

    def _decide_at(self, outcome: Outcome) -> int:
        """When an outcome is decided: once any impression that could still win it (the latest
        candidate, at the outcome's time at most) would be too late, on the timer grid."""
        return timer_at(too_late_from_ms(outcome.ts_ms, self.lateness_ms))

    def _past_use_at(self, impression: Impression) -> int:
        """When an impression is past use: the outcomes it may win (up to a window after it) are decided."""
        return timer_at(too_late_from_ms(impression.ts_ms + self.window_ms, self.lateness_ms))

    def _learns(self, impression: Impression) -> bool:
        return self.linucb is not None and served_by_linucb(impression.policy)

    def _learn(self, impression: Impression, credits: StateMap) -> None:
        """A LinUCB-served impression with final outcomes: one update of its item's statistics."""
        if self.linucb is None or not served_by_linucb(impression.policy):
            return
        clicked = credits.get(f"{impression.event_id}\x1f{CLICK}") is not None
        for kind in ATTRIBUTED_OUTCOMES:
            credits.remove(f"{impression.event_id}\x1f{kind}")
        x = self.linucb.context_at(impression.user_id, impression.ts_ms)
        if x is None:
            self.tally["linucb_no_context"] += 1
            return
        applied = self.linucb.update(impression.event_id, impression.item_id, x, 1.0 if clicked else 0.0)
        self.tally["linucb_applied" if applied else "linucb_duplicate"] += 1


def timer_at(ms: int) -> int:
    """`ms` rounded up to the next multiple of `TIMER_GRID_MS`. Flink keeps one timer per key and
    time, so a key's outcomes within one grid step share a timer and are decided in one pass over
    its state: with a timer each, a key with n pending outcomes (a client clicking one item without
    request ids) cost n passes over n outcomes. Deciding later changes no decision: an impression
    that could still win an outcome is too late on arrival from its exact decision time on."""
    return -(-ms // TIMER_GRID_MS) * TIMER_GRID_MS


def _outcomes(pending: StateMap) -> list[Outcome]:
    return [Outcome(**json.loads(value)) for _, value in pending.items()]
