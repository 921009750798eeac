"""Interleaved comparisons read from the event log: each learner request's slots, teams and clicks.

Why the event log and not the attribution store: the store (`feature_store.attribution_store`)
keeps attributed *counts* per item, position and arm, summed over requests, while DBGD needs to
know which team won each request; the log holds every impression (with its request id, slot and
team) and every outcome (with the request id when the client sends it), and any process may read
it without a lock (`EventLogReader`: complete files only).

The cursor is the set of files already read: a visible file is complete and never changes, so a
file is read once. Files of partitions older than the attribution window before the newest event
seen are not listed again (a late file there could only hold outcomes past the window).

A request's revision is the policy's explore label (`…;explore=learner:<revision id>`); impressions
logged before the learner's traffic became arms of the `learner` experiment also carry it as their
arm, which is read when the policy is missing.

A request's comparison is final once the newest event time seen passes its impressions' time plus
the attribution window plus the log's `lateness` (an event-time watermark, as the Flink join
uses): outcomes attributed later would not count there either. The lateness is how long a
visible event may precede events still in another writer's open file (each API worker writes its
own files, published when they roll, up to `event_log.roll_max_age_s` plus the roller's tick after
they opened: `log_lateness`): the newest visible time comes from any worker's file, so without it
a click still in a file not rolled was read as no click, or dropped as an orphan. The watermark
never passes the reader's clock: the API accepts events up to `events.max_future_skew_s` ahead,
and an importer's or a client's far-future time had finished every request early (their clicks
then dropped) or moved the watermark past every partition still to come (the learner read nothing
more). Outcomes are attributed by the project's one rule
(`feature_store.attribution.attribute`): the request id when the outcome carries one, else the
user's latest impression of the item within the window. The pending requests' impressions are
indexed by (user, item), so an outcome costs a lookup, not a scan of every pending request.

An outcome can be read before the impression it belongs to: the API appends a posted click at
once, while its impressions wait in the impression writer's queue, so a client that clicks within
milliseconds (the simulator does) puts the click first in the log (9 of 10 of the learner's
clicks in a live run read that way, and were lost). An outcome that matches no pending impression
waits, indexed the same way, until an impression it belongs to arrives or the watermark passes its
time plus the lateness plus `ORPHAN_WAIT_MS` (the impression writer's delay is well under it); at most `max_orphans` wait, the
oldest dropped first. An outcome without a request id that waits is attributed to the first
matching impression to arrive, not necessarily the latest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.attribution import Impression, Outcome, attribute, event_ms, is_outcome
from feature_store.event_log import MAX_ROLL_TICK_S, EventLogReader
from feature_store.schemas import Event, EventType
from services.experiments.model import LEARNER

ORPHAN_WAIT_MS = 60_000
MAX_ORPHANS = 100_000
Pair = tuple[str, str]  # (user id, item id)
Request = tuple[str, str]  # (user id, request id)


@dataclass(frozen=True)
class Comparison:
    """One learner request (a user's request id: two users may send the same one): its revision's
    label (`learner:<revision id>`), each slot's item and team, and which slots got an attributed
    outcome."""

    user_id: str
    request_id: str
    arm: str
    items: tuple[str, ...]
    teams: tuple[str, ...]
    clicked: tuple[bool, ...]

    def credit(self, team: str) -> int:
        """Outcomes on the slots `team` placed."""
        return sum(click for slot_team, click in zip(self.teams, self.clicked) if slot_team == team)


@dataclass
class _Pending:
    arm: str
    served_ms: int
    slots: dict[int, tuple[str, Impression]] = field(default_factory=dict)  # position -> team, impression
    clicked: set[int] = field(default_factory=set)


class ComparisonReader:
    """Reads new event-log files and returns the learner's finished comparisons."""

    def __init__(self, log_dir: Path, window: timedelta, since: datetime | None = None, max_orphans: int = MAX_ORPHANS,
                 lateness: timedelta = timedelta(0), clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        """`since`: skip partitions before it at the first read (the process starts from the
        current hour less the window: older feedback is for revisions no longer served);
        `lateness`: the log's (`log_lateness`; 0 for one writer that rolls before it is read)."""
        self.reader = EventLogReader(log_dir)
        self.max_orphans = max_orphans
        self.window_ms = int(window.total_seconds() * 1000)
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.clock = clock
        self._read: set[Path] = set()
        self._pending: dict[Request, _Pending] = {}
        self._shown: dict[Pair, list[Impression]] = {}  # the pending requests' impressions
        self._orphans: OrderedDict[str, Outcome] = OrderedDict()  # event id -> outcome read before its impression
        self._orphans_by_pair: dict[Pair, dict[str, Outcome]] = {}
        self.orphans_dropped = 0
        self._watermark_ms = 0
        self._since = since

    def poll(self) -> list[Comparison]:
        """Comparisons finished by the events of the files that appeared since the last call (and
        by the clock, once it reaches a watermark that future-dated events put ahead of it)."""
        oldest = self._since
        if self._watermark_ms:
            seen = datetime.fromtimestamp((self._watermark() - self.window_ms) / 1000 - 3600, timezone.utc)
            oldest = seen if oldest is None else max(oldest, seen)
        listed = self.reader.files(oldest)
        for path in listed:
            if path not in self._read:
                for event in _events(path):
                    self._take(event)
        self._read = set(listed)
        watermark = self._watermark()
        self._expire_orphans(watermark - self.lateness_ms - ORPHAN_WAIT_MS)
        return self._finished(watermark - self.lateness_ms)

    def _watermark(self) -> int:
        """The newest event time read, never past the clock."""
        return min(self._watermark_ms, int(self.clock() * 1000))

    def _take(self, event: Event) -> None:
        impression = Impression.of(event) if event.type == EventType.IMPRESSION else None
        self._watermark_ms = max(self._watermark_ms, event_ms(event))
        context = event.context
        if impression is not None and context is not None and context.experiment == LEARNER:
            revision = revision_label(context.policy) or context.arm
            if context.request_id and context.position is not None and context.team and revision:
                pending = self._pending.setdefault((event.user_id, context.request_id), _Pending(revision, impression.ts_ms))
                replaced = pending.slots.get(context.position)
                if replaced is not None:  # the same slot logged again (a retried request id)
                    self._unshow(replaced[1])
                pending.slots[context.position] = (context.team, impression)
                self._shown.setdefault((impression.user_id, impression.item_id), []).append(impression)
                self._adopt(impression)
        elif is_outcome(event):
            self._credit(Outcome.of(event))

    def _credit(self, outcome: Outcome) -> None:
        pair = (outcome.user_id, outcome.item_id)
        chosen = attribute(outcome, self._shown.get(pair, ()), self.window_ms)
        if chosen is not None:
            self._click(chosen)
        elif outcome.event_id not in self._orphans:
            self._orphans[outcome.event_id] = outcome
            self._orphans_by_pair.setdefault(pair, {})[outcome.event_id] = outcome
            if len(self._orphans) > self.max_orphans:
                self._drop_orphan(next(iter(self._orphans)))
                self.orphans_dropped += 1

    def _click(self, impression: Impression) -> None:
        pending = self._pending[(impression.user_id, impression.request_id)]  # type: ignore[index]  # pending impressions have one
        pending.clicked.update(p for p, (_, shown) in pending.slots.items() if shown is impression)

    def _unshow(self, impression: Impression) -> None:
        pair = (impression.user_id, impression.item_id)
        shown = self._shown[pair]
        shown.remove(impression)
        if not shown:
            del self._shown[pair]

    def _adopt(self, impression: Impression) -> None:
        """Credit `impression` with the waiting outcomes that belong to it."""
        waiting = self._orphans_by_pair.get((impression.user_id, impression.item_id), {})
        for event_id, outcome in list(waiting.items()):
            if attribute(outcome, [impression], self.window_ms) is impression:
                self._click(impression)
                self._drop_orphan(event_id)

    def _drop_orphan(self, event_id: str) -> None:
        outcome = self._orphans.pop(event_id)
        pair = (outcome.user_id, outcome.item_id)
        waiting = self._orphans_by_pair[pair]
        del waiting[event_id]
        if not waiting:
            del self._orphans_by_pair[pair]

    def _expire_orphans(self, before_ms: int) -> None:
        """Drop the waiting outcomes older than `before_ms`, oldest read first (the log is read in
        about event-time order, so one slightly out of order waits until a later poll)."""
        while self._orphans and next(iter(self._orphans.values())).ts_ms < before_ms:
            self._drop_orphan(next(iter(self._orphans)))

    def _finished(self, watermark_ms: int) -> list[Comparison]:
        done = [request for request, p in self._pending.items() if p.served_ms + self.window_ms < watermark_ms]
        for request in done:
            for _, impression in self._pending[request].slots.values():
                self._unshow(impression)
        return [self._comparison(request, self._pending.pop(request)) for request in done]

    @staticmethod
    def _comparison(request: Request, pending: _Pending) -> Comparison:
        positions = sorted(pending.slots)
        return Comparison(*request, pending.arm, tuple(pending.slots[p][1].item_id for p in positions),
                          tuple(pending.slots[p][0] for p in positions), tuple(p in pending.clicked for p in positions))


def log_lateness(roll_max_age_s: float) -> timedelta:
    """How long a visible event may precede events still in another writer's open file: a file is
    published at most `roll_max_age_s` plus the roller's tick after it opened."""
    return timedelta(seconds=roll_max_age_s + MAX_ROLL_TICK_S)


def revision_label(policy: str | None) -> str | None:
    """`learner:<revision id>` from a policy `ranker=…;explore=learner:<revision id>`, else None."""
    parts = dict(part.split("=", 1) for part in (policy or "").split(";") if "=" in part)
    explore = parts.get("explore", "")
    return explore if explore.startswith(f"{LEARNER}:") else None


def _events(path: Path) -> Iterator[Event]:
    """A complete file's events (a malformed line is skipped: the intake validated every event)."""
    with path.open("rb") as handle:
        for line in handle:
            try:
                yield Event.model_validate_json(line)
            except ValueError:
                continue
