"""Leave-last-one-out by time: each user's last positive is the test item, the rest is training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class LeaveLastOut:
    """`train[user]` is the user's positives before the held-out one, oldest first;
    `test[user]` the held-out last positive (users with a single positive have no test item)."""

    train: dict[str, list[str]]
    test: dict[str, str]
    start: datetime | float | None = None
    end: datetime | float | None = None

    def train_sequences(self) -> list[list[str]]:
        return [items for items in self.train.values() if items]


def leave_last_one_out(interactions: Iterable[tuple[str, str, datetime | float]]) -> LeaveLastOut:
    """Split (user_id, item_id, ts) positives. Ties in ts keep input order (stable sort)."""
    by_user: dict[str, list[tuple[datetime | float, int, str]]] = defaultdict(list)
    start = end = None
    for order, (user, item, ts) in enumerate(interactions):
        by_user[user].append((ts, order, item))
        start = ts if start is None or ts < start else start
        end = ts if end is None or ts > end else end
    train: dict[str, list[str]] = {}
    test: dict[str, str] = {}
    for user, events in by_user.items():
        items = [item for _, _, item in sorted(events)]
        if len(items) >= 2:
            train[user], test[user] = items[:-1], items[-1]
        else:
            train[user] = items
    return LeaveLastOut(train, test, start, end)
