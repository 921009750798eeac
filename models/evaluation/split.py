"""Leave-last-one-out by time: each user's last positive is the test item, the rest is training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

Timestamp = datetime | float


@dataclass(frozen=True)
class LeaveLastOut:
    """`train[user]` is the user's positives before the held-out one, oldest first;
    `test[user]` the held-out last positive (users with a single positive have no test item).

    `train_ts[user]` holds the event time of each training positive (aligned with `train[user]`)
    and `test_ts[user]` that of the held-out one: the time of the request being evaluated, so
    time-dependent features can be taken as of it (never the held-out item itself)."""

    train: dict[str, list[str]]
    test: dict[str, str]
    start: Timestamp | None = None
    end: Timestamp | None = None
    train_ts: dict[str, list[Timestamp]] = field(default_factory=dict)
    test_ts: dict[str, Timestamp] = field(default_factory=dict)

    def train_sequences(self) -> list[list[str]]:
        return [items for items in self.train.values() if items]


def leave_last_one_out(interactions: Iterable[tuple[str, str, Timestamp]]) -> LeaveLastOut:
    """Split (user_id, item_id, ts) positives. Ties in ts keep input order; read from the event log
    (`EventLogReader.read`, ordered by (ts, event_id)) that is event-id order, and an imported
    event's id embeds its item (`<dataset>:<user>:<item>:<ts>`), so tied imports are ordered by the
    ids' strings (`…:14:…` before `…:1:…`: `:` sorts after the digits), not by their order in the
    imported file: deterministic, the same in every engine, though not numeric item order."""
    by_user: dict[str, list[tuple[Timestamp, int, str]]] = defaultdict(list)
    start = end = None
    for order, (user, item, ts) in enumerate(interactions):
        by_user[user].append((ts, order, item))
        start = ts if start is None or ts < start else start
        end = ts if end is None or ts > end else end
    train: dict[str, list[str]] = {}
    test: dict[str, str] = {}
    train_ts: dict[str, list[Timestamp]] = {}
    test_ts: dict[str, Timestamp] = {}
    for user, events in by_user.items():
        ordered = sorted(events)
        items, times = [item for _, _, item in ordered], [ts for ts, _, _ in ordered]
        if len(items) >= 2:
            train[user], test[user], train_ts[user], test_ts[user] = items[:-1], items[-1], times[:-1], times[-1]
        else:
            train[user], train_ts[user] = items, times
    return LeaveLastOut(train, test, start, end, train_ts, test_ts)
