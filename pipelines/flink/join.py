"""The attribution join of one (user, item) key, as the stream job runs it, without Flink.

`AttributionJoin` keeps its state in two maps per key (`KeyState`: one JSON document in a Flink
`ValueState` in the job, so an event costs one state read and one write) and applies
`feature_store.attribution.attribute`, the rule every engine implements:

- `impressions`: impression event id -> the impression and the outcome types already credited to
  it. Kept until the watermark passes `ts + window + allowed lateness` (after that no outcome that
  is not too late can match it);
- `pending`: outcome event id -> an outcome not decided yet.

When an outcome is decided:

- with a request id: as soon as that request's impression is in state (a request shows an item
  once, so the match is final, whatever arrives later), else when the watermark passes the
  outcome's time plus the allowed lateness (an impression arriving before that still matches it:
  the outcome waits in `pending`); then it is unattributed if nothing matched;
- without a request id: always when the watermark passes the outcome's time plus the allowed
  lateness, since the latest impression wins and a later one (in event time, up to the outcome's)
  may still arrive: after that, any such impression would be too late for the job anyway.

When an impression leaves the state (its window and the allowed lateness have passed, so its
outcomes are final) and LinUCB served it, the join adds it to the item's LinUCB statistics
(`feature_store.linucb_store`): the context its request saved, reward 1 if a click was credited
to it, else 0, once per impression (the store's replay marker).

So a decision never depends on the order in which events arrive (the event log's files are read
in no particular order after a restart or a pause), only on which events are within the allowed
lateness. Each decision goes to the `AttributionStore`, whose replay markers make a second
application of the same decision (a replay after a restore) a no-op: the counts have an
exactly-once effect.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Iterable

from feature_store.attribution import Impression, Outcome, attribute
from feature_store.attribution_store import AttributionStore, Miss, RecordResult
from feature_store.linucb_store import LinUcbStore, served_by_linucb
from feature_store.position_bias import CLICK


class DictMap:
    """One map of a key's state: id -> JSON."""

    def __init__(self, data: dict[str, str] | None = None) -> None:
        self.data = {} if data is None else data

    def put(self, key: str, value: str) -> None:
        self.data[key] = value

    def remove(self, key: str) -> None:
        del self.data[key]

    def contains(self, key: str) -> bool:
        return key in self.data

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self.data.items())


class KeyState:
    """The state of one key, impressions and pending outcomes, as one JSON document."""

    def __init__(self, document: str | None) -> None:
        data = json.loads(document) if document else {"impressions": {}, "pending": {}}
        self.impressions, self.pending = DictMap(data["impressions"]), DictMap(data["pending"])

    def dump(self) -> str | None:
        """The document to store, or None when the key holds nothing (clear the state)."""
        if not self.impressions.data and not self.pending.data:
            return None
        return json.dumps({"impressions": self.impressions.data, "pending": self.pending.data})


class AttributionJoin:
    """Joins the impressions and outcomes of one key; `tally` counts what it did (for metrics)."""

    def __init__(self, store: AttributionStore, window_ms: int, allowed_lateness_ms: int,
                 linucb: LinUcbStore | None = None) -> None:
        self.store = store
        self.linucb = linucb
        self.window_ms = window_ms
        self.lateness_ms = allowed_lateness_ms
        self.keep_ms = window_ms + allowed_lateness_ms
        self.tally: Counter[str] = Counter()

    def impression(self, impression: Impression, impressions: DictMap, pending: DictMap) -> int:
        """Count `impression`, credit the pending outcomes of its request; returns its cleanup time."""
        if not impressions.contains(impression.event_id):
            impressions.put(impression.event_id, _encode(impression, []))
        self._tally(self.store.record_impression(impression), "impression")
        if impression.request_id is not None:
            for outcome in [o for o in _outcomes(pending) if o.request_id == impression.request_id]:
                if attribute(outcome, [impression], self.window_ms) is not None:
                    self._credit(outcome, impressions)
                    pending.remove(outcome.event_id)
        return impression.ts_ms + self.keep_ms

    def outcome(self, outcome: Outcome, impressions: DictMap, pending: DictMap) -> int | None:
        """Credit `outcome` now if its request's impression is known; else park it and return when
        to decide it (once the watermark passes its time plus the allowed lateness)."""
        if outcome.request_id is not None and self._credit(outcome, impressions):
            return None
        pending.put(outcome.event_id, json.dumps(asdict(outcome)))
        return outcome.ts_ms + self.lateness_ms

    def fire(self, timestamp: int, impressions: DictMap, pending: DictMap) -> None:
        """The watermark reached `timestamp`: decide the outcomes up to it, drop impressions past use."""
        for outcome in [o for o in _outcomes(pending) if o.ts_ms + self.lateness_ms <= timestamp]:
            if not self._credit(outcome, impressions):
                self._tally(self.store.record_miss(outcome, Miss.UNATTRIBUTED), "unattributed")
            pending.remove(outcome.event_id)
        for event_id, value in list(impressions.items()):
            fields = json.loads(value)
            if fields["ts_ms"] + self.keep_ms <= timestamp:
                self._learn(_impression(fields), fields["credited"])
                impressions.remove(event_id)

    def late(self, outcome: Outcome) -> None:
        """An outcome too late for the speed layer: counted, and left to the batch layer."""
        self._tally(self.store.record_miss(outcome, Miss.LATE), "late")

    def _credit(self, outcome: Outcome, impressions: DictMap) -> bool:
        """Credit `outcome` to its impression in state, if the rule finds one; False if none."""
        known = {event_id: json.loads(value) for event_id, value in impressions.items()}
        target = attribute(outcome, [_impression(v) for v in known.values()], self.window_ms)
        if target is None:
            return False
        credited = known[target.event_id]["credited"]
        if outcome.type in credited:
            self.tally["credit_duplicate"] += 1
            return True
        self._tally(self.store.record_credit(target, outcome), "credit")
        impressions.put(target.event_id, _encode(target, [*credited, outcome.type]))
        return True

    def _learn(self, impression: Impression, credited: list[str]) -> None:
        """A LinUCB-served impression with final outcomes: one update of its item's statistics."""
        if self.linucb is None or not served_by_linucb(impression.policy):
            return
        x = self.linucb.context_at(impression.user_id, impression.ts_ms)
        if x is None:
            self.tally["linucb_no_context"] += 1
            return
        reward = 1.0 if CLICK in credited else 0.0
        applied = self.linucb.update(impression.event_id, impression.item_id, x, reward)
        self.tally["linucb_applied" if applied else "linucb_duplicate"] += 1

    def _tally(self, result: RecordResult, what: str) -> None:
        self.tally[f"{what}_{result}"] += 1


def _encode(impression: Impression, credited: list[str]) -> str:
    return json.dumps({**asdict(impression), "credited": credited})


def _impression(fields: dict) -> Impression:
    return Impression(**{k: v for k, v in fields.items() if k != "credited"})


def _outcomes(pending: DictMap) -> list[Outcome]:
    return [Outcome(**json.loads(value)) for _, value in pending.items()]
