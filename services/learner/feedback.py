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
the attribution window (an event-time watermark, as the Flink join uses): outcomes attributed
later would not count there either. Outcomes are attributed by the project's one rule
(`feature_store.attribution.attribute`): the request id when the outcome carries one, else the
user's latest impression of the item within the window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.attribution import Impression, Outcome, attribute, event_ms, is_outcome
from feature_store.event_log import EventLogReader
from feature_store.schemas import Event, EventType
from services.experiments.model import LEARNER


@dataclass(frozen=True)
class Comparison:
    """One learner request: its revision's label (`learner:<revision id>`), each slot's team, and
    which slots got an attributed outcome."""

    request_id: str
    arm: str
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

    def __init__(self, log_dir: Path, window: timedelta, since: datetime | None = None) -> None:
        """`since`: skip partitions before it at the first read (the process starts from the
        current hour less the window: older feedback is for revisions no longer served)."""
        self.reader = EventLogReader(log_dir)
        self.window_ms = int(window.total_seconds() * 1000)
        self._read: set[Path] = set()
        self._pending: dict[str, _Pending] = {}
        self._watermark_ms = 0
        self._since = since

    def poll(self) -> list[Comparison]:
        """Comparisons finished by the events of the files that appeared since the last call."""
        oldest = self._since
        if self._watermark_ms:
            seen = datetime.fromtimestamp((self._watermark_ms - self.window_ms) / 1000 - 3600, timezone.utc)
            oldest = seen if oldest is None else max(oldest, seen)
        listed = self.reader.files(oldest)
        for path in listed:
            if path not in self._read:
                for event in _events(path):
                    self._take(event)
        self._read = set(listed)
        return self._finished(self._watermark_ms)

    def _take(self, event: Event) -> None:
        impression = Impression.of(event) if event.type == EventType.IMPRESSION else None
        self._watermark_ms = max(self._watermark_ms, event_ms(event))
        context = event.context
        if impression is not None and context is not None and context.experiment == LEARNER:
            revision = revision_label(context.policy) or context.arm
            if context.request_id and context.position is not None and context.team and revision:
                pending = self._pending.setdefault(context.request_id, _Pending(revision, impression.ts_ms))
                pending.slots[context.position] = (context.team, impression)
        elif is_outcome(event):
            self._credit(Outcome.of(event))

    def _credit(self, outcome: Outcome) -> None:
        candidates = [impression for pending in self._pending.values() for _, impression in pending.slots.values()
                      if impression.user_id == outcome.user_id and impression.item_id == outcome.item_id]
        chosen = attribute(outcome, candidates, self.window_ms)
        if chosen is not None:
            pending = self._pending[chosen.request_id]
            pending.clicked.update(p for p, (_, imp) in pending.slots.items() if imp is chosen)

    def _finished(self, watermark_ms: int | None) -> list[Comparison]:
        done = [rid for rid, p in self._pending.items() if watermark_ms is None or p.served_ms + self.window_ms < watermark_ms]
        return [self._comparison(rid, self._pending.pop(rid)) for rid in done]

    @staticmethod
    def _comparison(request_id: str, pending: _Pending) -> Comparison:
        positions = sorted(pending.slots)
        return Comparison(request_id, pending.arm, tuple(pending.slots[p][0] for p in positions),
                          tuple(p in pending.clicked for p in positions))


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
