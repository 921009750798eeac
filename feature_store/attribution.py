"""Outcome attribution: which impression a click (like, add to cart, purchase) belongs to.

The one rule the speed layer (Flink, keyed event-time state) and the batch layer (Spark, over the
whole log) both implement, and what they count. Pure Python, so tests can state expectations
with it and both engines can be checked against each other.

The rule (for an outcome `o` of user `u` on item `i` at event time `t`):

1. Only `ATTRIBUTED_OUTCOMES` are attributed; other events are not outcomes.
2. Candidates are `u`'s impressions of `i` shown at `s` with `0 <= t - s <= window`.
3. If `o.context.request_id` is set, only the candidate of that request qualifies; an unknown
   request id leaves the outcome unattributed (it is not re-attributed to another request).
4. Otherwise the latest candidate wins (largest `s`, then largest impression event id).
5. No candidate: the outcome is unattributed, and counted as such.

An impression counts at most one outcome of each type (two clicks on one slot are one click), so
a CTR built from these counts never exceeds 1. Counts are bucketed by the *impression's* event
hour: a bucket is final ("closed") once every outcome that may still be attributed to it is
decided, which the speed layer does when its watermark passes the bucket's end plus the window
plus its allowed lateness (docs/speed_layer.md, "Lambda consistency").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from feature_store.definitions import join_key
from feature_store.schemas import Event, EventType

ATTRIBUTED_OUTCOMES = frozenset({EventType.CLICK, EventType.LIKE, EventType.ADD_TO_CART, EventType.PURCHASE})
DEFAULT_WINDOW = timedelta(minutes=30)
BUCKET_MS = 3_600_000  # counts are kept per event-time hour
NO_VALUE = "-"  # how an impression without policy, arm or position is spelled in a count key
#: Positions from here on share one count (a client may log any position, and every bandit read
#: sums over each counted position): the API shows at most 100 items a request.
MAX_COUNTED_POSITION = 100
#: An online learner revision in a policy label (`ranker=v3@r12-3fa9c1`, `explore=learner:r12-3fa9c1`),
#: counted as `r*`: the (policy, arm) counts keep one key per base ranker, not one per revision (PDGD
#: may publish one a second). Group 1 is what precedes the id (a Java regex too: Spark uses it).
REVISION_IN_POLICY = r"(@|learner:)r[0-9]+-[0-9a-f]{6}"
_REVISION = re.compile(REVISION_IN_POLICY)
#: Event ids of the impressions the API logs for the lists it serves (`imp-<request id>-<position>`,
#: `services.recommend.impressions.impression_event_id`).
SERVER_IMPRESSION_PREFIX = "imp-"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


class Dimension:
    """What attributed counts are grouped by (the key of one count row)."""

    ITEM = "item"
    ITEM_POSITION = "item_position"
    POSITION = "position"
    POLICY_ARM = "policy_arm"

    ALL = (ITEM, ITEM_POSITION, POSITION, POLICY_ARM)


@dataclass(frozen=True)
class Impression:
    """The fields of an impression event that attribution and its counts need."""

    event_id: str
    user_id: str
    item_id: str
    ts_ms: int
    request_id: str | None
    position: int | None
    policy: str | None
    experiment: str | None
    arm: str | None

    @classmethod
    def of(cls, event: Event) -> "Impression":
        context = event.context
        return cls(
            event.event_id, event.user_id, event.item_id, event_ms(event), context.request_id,
            context.position, getattr(context, "policy", None), context.experiment, context.arm,
        )

    @property
    def counted_position(self) -> str:
        """The position as count keys spell it: `NO_VALUE` when unknown, capped at `MAX_COUNTED_POSITION`."""
        return NO_VALUE if self.position is None else str(min(self.position, MAX_COUNTED_POSITION))

    @property
    def counted_policy_arm(self) -> str:
        """The (policy, arm) count key: the policy as `counted_policy` spells it, `NO_VALUE` for no arm."""
        return join_key(counted_policy(self.policy), self.arm or NO_VALUE)

    def count_keys(self) -> list[tuple[str, str]]:
        """(dimension, id) of every count this impression (and its outcomes) adds to."""
        position = self.counted_position
        return [
            (Dimension.ITEM, self.item_id),
            (Dimension.ITEM_POSITION, join_key(self.item_id, position)),
            (Dimension.POSITION, position),
            (Dimension.POLICY_ARM, self.counted_policy_arm),
        ]

    @property
    def bucket_ms(self) -> int:
        return self.ts_ms - self.ts_ms % BUCKET_MS


def counted_policy(policy: str | None) -> str:
    """A policy label as the (policy, arm) counts spell it: revision ids as `r*`, `NO_VALUE` when none."""
    return _REVISION.sub(r"\1r*", policy) if policy else NO_VALUE


def split_item_position(key: str) -> tuple[str, str]:
    """(item id, position) of an `item_position` count key: the inverse of `join_key(item, position)`
    (a position holds no `|`)."""
    item, _, position = key.rpartition("|")
    return item.replace("%7C", "|").replace("%25", "%"), position


@dataclass(frozen=True)
class Outcome:
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts_ms: int
    request_id: str | None

    @classmethod
    def of(cls, event: Event) -> "Outcome":
        return cls(event.event_id, event.user_id, event.item_id, str(event.type), event_ms(event),
                   event.context.request_id)


def replay_window_ms(event_type: str, event_id: str, dedup_ttl_s: float, server_impression_ttl_s: float) -> int:
    """How long after its time a replay of an event is still recognised as one (its replay marker
    lives this plus the clock-skew allowance), and so the oldest an event may be and still be
    applied: `dedup_ttl_s`, or for an impression the API logged itself (`SERVER_IMPRESSION_PREFIX`)
    the shorter of that and `server_impression_ttl_s`. Such an impression is repeated only by a
    retried request (seconds later) or by the stream job reading it again after a restart (events
    since its last checkpoint), while a client may resend its own events much later."""
    server = event_type == EventType.IMPRESSION and event_id.startswith(SERVER_IMPRESSION_PREFIX)
    return int(min(dedup_ttl_s, server_impression_ttl_s) * 1000) if server else int(dedup_ttl_s * 1000)


def event_ms(event: Event) -> int:
    """The event time in ms since the epoch, floored as Spark's `unix_millis` floors: in integers,
    since `ts.timestamp() * 1000` loses a ms to float rounding for some times and truncates toward
    zero before 1970."""
    return (event.ts - EPOCH) // _MS


def is_outcome(event: Event) -> bool:
    return event.type in ATTRIBUTED_OUTCOMES


def attribute(outcome: Outcome, impressions: Iterable[Impression], window_ms: int) -> Impression | None:
    """The impression `outcome` is attributed to under the rule above, or None."""
    candidates = [
        i for i in impressions
        if i.user_id == outcome.user_id and i.item_id == outcome.item_id and 0 <= outcome.ts_ms - i.ts_ms <= window_ms
    ]
    if outcome.request_id is not None:
        candidates = [i for i in candidates if i.request_id == outcome.request_id]
    return max(candidates, key=lambda i: (i.ts_ms, i.event_id), default=None)


@dataclass(frozen=True)
class CountRow:
    """One count: impressions or attributed outcomes of a type, per dimension id and hour."""

    dimension: str
    key: str
    bucket_ms: int
    measure: str  # "impression" or an outcome type
    value: int


def reference_counts(events: Sequence[Event], window_ms: int) -> dict[tuple[str, str, int, str], int]:
    """The counts of a whole log by the rule, in memory: the independent oracle for tests.

    Keys are (dimension, id, hour bucket ms, measure) as in `CountRow`.
    """
    impressions = [Impression.of(e) for e in events if e.type == EventType.IMPRESSION]
    counts: dict[tuple[str, str, int, str], int] = {}
    for impression in _unique(impressions):
        for dimension, key in impression.count_keys():
            _add(counts, (dimension, key, impression.bucket_ms, EventType.IMPRESSION.value))
    credited: set[tuple[str, str]] = set()
    outcomes = _unique(Outcome.of(e) for e in events if is_outcome(e))
    for outcome in sorted(outcomes, key=lambda o: (o.ts_ms, o.event_id)):
        target = attribute(outcome, impressions, window_ms)
        if target is None or (target.event_id, outcome.type) in credited:
            continue
        credited.add((target.event_id, outcome.type))
        for dimension, key in target.count_keys():
            _add(counts, (dimension, key, target.bucket_ms, outcome.type))
    return counts


def _unique(records: Iterable[Impression | Outcome]) -> Iterator:
    seen: set[str] = set()
    for record in records:
        if record.event_id not in seen:
            seen.add(record.event_id)
            yield record


def _add(counts: dict[tuple[str, str, int, str], int], key: tuple[str, str, int, str]) -> None:
    counts[key] = counts.get(key, 0) + 1
