"""Served lists are impressions: one `impression` event per shown slot, logged off the request path.

A recommendation handler hands its answer to `ImpressionLogger.submit`, which only puts it on a
bounded queue (never blocks; a full queue drops the list and counts it). One background writer
thread takes what is queued, turns it into events and sends them through the same intake as
`POST /v1/events` (`services.recommend.intake.ingest`, without its claim markers: the ids are
the server's own): one event-log append per batch, which the log's group commit shares with
concurrent posts, then the live features (impression counts).

An impression's `event_id` is `imp-<request id>-<position>`, so a request retried with the same
`X-Request-ID` never logs a slot twice; its `ts` is the server clock when the list was served; its
context carries the slot, the request's page, experiment and arm (the ones the service assigned,
`services.experiments`, over the client's), the team of an interleaved slot with every team's rank
of its item (and, probabilistic, every team's propensity of the placement), and the serving
policy with the propensity of the placement under it (`serving_policy`; Thompson's estimate is
computed here, on the writer thread, from what the explore stage left pending). The first slot of a
sampled share of requests (`explore.log_candidates_share`, decided by a hash of the request id) also
carries the first `explore.log_candidates_top_n` ranked candidates the explore stage chose from (at
least as many as the slate has slots), their scores and how many there were: the input of
off-policy evaluation (docs/exploration.md).

If the event log cannot be written (disk full, I/O error) the writer retries the same batch with
backoff while the queue fills up and then drops new lists; `close` drains the queue for at most
its drain timeout and counts what is left as dropped.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from feature_store.attribution import SERVER_IMPRESSION_PREFIX
from feature_store.event_log import EventLog
from feature_store.schemas import Event, EventContext, EventType, error_message
from services.recommend.intake import ingest
from services.recommend.online_store import ServingStore
from services.recommend.types import RecommendationRequest, RecommendationResult

log = logging.getLogger(__name__)

#: Request context fields an impression keeps (the rest of its context is the server's).
REQUEST_CONTEXT = ("page", "experiment", "arm")
# Events per intake call: its live-feature script holds Redis (~10 µs per event) and requests
# queue behind it, so a backlog is worked off in short calls.
MAX_BATCH_EVENTS = 100
# Without a backlog, how long the writer lets lists gather after the first: one append (fsync) and
# one live-feature script serve them all, instead of each request paying for its own.
BATCH_LINGER_S = 0.05
DROP_REPORT_INTERVAL_S = 10.0
RETRY_BACKOFF_S = (0.05, 2.0)  # first and largest wait between failed appends

OutcomeCounter = Callable[[str, int], None]
"""Called with an outcome and a number of impressions: `logged`, `duplicate` (its slot was logged
before: a retried request id), `dropped` (queue full, or still unwritten at shutdown) and
`not_applied` (logged, but Redis was unreachable: the live counts catch up at the next batch run)."""


def impression_event_id(request_id: str, user_id: str, position: int) -> str:
    """The event id of a slot, `imp-<request id>-<8 hex of the user id's sha256>-<position>`:
    deterministic, so a retried request logs each slot once, and apart for two users whose clients
    send one `X-Request-ID` (a page view's id reused by its widgets), which would else be taken for
    one another's duplicates and dropped."""
    user = hashlib.sha256(user_id.encode()).hexdigest()[:8]
    return f"{SERVER_IMPRESSION_PREFIX}{request_id}-{user}-{position}"


def serving_policy(result: RecommendationResult) -> str:
    """What produced the list's slots: `ranker=<version or fallback>;explore=<policy label>`
    (`services.explore`), or `fallback=<name>` for a degraded answer from the in-process fallback list."""
    if result.degraded:
        return f"fallback={result.fallback}"
    ranker = result.fallback or result.model_versions.get("ranker", "none")
    return f"ranker={ranker};explore={result.explore}"


@dataclass(frozen=True)
class ServedList:
    """One answered request, as the impression writer needs it (cheap to build on the request path)."""

    request_id: str
    user_id: str
    item_ids: tuple[str, ...]
    served_at: datetime
    policy: str
    propensities: tuple[float | None, ...]  # per slot, under `policy`
    model_versions: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    teams: tuple[str | None, ...] = ()  # interleaving: the team of each slot
    candidates: tuple[tuple[str, ...], tuple[float, ...], int] | None = None  # logged ids, scores, how many ranked
    ranks: tuple[dict[str, int] | None, ...] = ()  # interleaving: each team's rank of each slot's item
    ranker_propensities: tuple[dict[str, float] | None, ...] = ()  # probabilistic interleaving, per slot
    pending: Callable[[], tuple[float, ...]] | None = None  # computes `propensities` (None per slot until then)

    @classmethod
    def of(cls, request: RecommendationRequest, result: RecommendationResult, request_id: str,
           served_at: datetime, candidates_share: float = 0.0, candidates_top_n: int = 0) -> "ServedList":
        """`candidates_share` of requests (by request id) also log their first `candidates_top_n` ranked
        candidates, and never fewer than the slate has slots: the ranker's top k (the items ε-greedy
        shows unexplored, slot by slot) must all be logged for off-policy evaluation to replay the
        slate (with k > top n, an explored item took the index of an unlogged top-k item)."""
        ids, scores = result.ranked
        logged = None
        if ids and not result.degraded and candidates_top_n > 0 and candidates_sampled(request_id, candidates_share):
            top_n = max(candidates_top_n, len(result.items))
            logged = (ids[:top_n], scores[:top_n], len(ids))
        return cls(
            request_id, request.user_id, tuple(item.item_id for item in result.items), served_at,
            serving_policy(result), tuple(item.propensity for item in result.items), dict(result.model_versions),
            {name: request.context[name] for name in REQUEST_CONTEXT if request.context.get(name) is not None},
            tuple(item.team for item in result.items) if any(item.team for item in result.items) else (),
            logged,
            tuple(item.ranks for item in result.items) if any(item.ranks for item in result.items) else (),
            tuple(item.ranker_propensities for item in result.items)
            if any(item.ranker_propensities for item in result.items) else (),
            result.pending_propensities,
        )

    def events(self) -> list[Event]:
        """One impression event per slot; a slot that is not a valid event is logged and skipped.
        Computes pending propensities first (Thompson's estimate: here, on the writer thread)."""
        events = []
        propensities = self.pending() if self.pending is not None else self.propensities
        for position, item_id in enumerate(self.item_ids):
            try:
                context = EventContext(
                    request_id=self.request_id, position=position, policy=self.policy,
                    propensity=propensities[position],
                    model_versions=self.model_versions or None,
                    team=self.teams[position] if self.teams else None,
                    ranks=self.ranks[position] if self.ranks else None,
                    ranker_propensities=self.ranker_propensities[position] if self.ranker_propensities else None,
                    **self.context,
                    **(self._candidates() if position == 0 and self.candidates else {}),
                )
                events.append(Event(
                    event_id=impression_event_id(self.request_id, self.user_id, position), user_id=self.user_id,
                    item_id=item_id, type=EventType.IMPRESSION, ts=self.served_at, context=context,
                ))
            except ValidationError as exc:
                log.error("impression of request %s slot %d is not a valid event: %s",
                          self.request_id, position, error_message(exc))
        return events

    def _candidates(self) -> dict[str, Any]:
        assert self.candidates is not None
        ids, scores, count = self.candidates
        return {"candidates": list(ids), "candidate_scores": list(scores), "candidate_count": count}


def candidates_sampled(request_id: str, share: float) -> bool:
    """Whether a request logs its candidates: a hash of its id below `share`, so a retry decides the same."""
    if share <= 0.0:
        return False
    digest = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return digest < share * 2**64


class ImpressionLogger:
    """A bounded queue of served lists and the thread that writes them as impression events."""

    def __init__(self, store: ServingStore, event_log: EventLog, queue_size: int,
                 drain_timeout_s: float = 5.0, on_outcome: OutcomeCounter | None = None) -> None:
        self._store = store
        self._event_log = event_log
        self._queue: queue.Queue[ServedList] = queue.Queue(maxsize=queue_size)
        self._drain_timeout_s = drain_timeout_s
        self._count = on_outcome or (lambda outcome, impressions: None)
        self._progress = threading.Condition()
        self._submitted = 0  # lists queued
        self._finished = 0  # lists written or given up
        self._closed = False
        self._give_up = threading.Event()  # past the drain deadline: count the rest as dropped
        self._unreported_drops = 0
        self._last_drop_report = float("-inf")
        self._thread = threading.Thread(target=self._run, name="impression-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, served: ServedList) -> bool:
        """Queue a served list for logging; False (and counted as dropped) if the queue is full."""
        if not served.item_ids:
            return True
        with self._progress:
            if not self._closed:
                try:
                    self._queue.put_nowait(served)
                except queue.Full:
                    pass
                else:
                    self._submitted += 1
                    return True
            self._drop(len(served.item_ids), "queue full" if not self._closed else "logger closed")
            return False

    def flush(self, timeout_s: float) -> bool:
        """Wait until every list queued before this call is written (or given up); False on timeout."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._finished >= target, timeout_s)

    def close(self) -> None:
        """Stop taking lists, drain the queue for at most the drain timeout, stop the writer."""
        with self._progress:
            self._closed = True
        if not self.flush(self._drain_timeout_s):
            log.error("impressions not written within %.1f s of shutdown are dropped", self._drain_timeout_s)
        self._give_up.set()
        self._thread.join(timeout=max(self._drain_timeout_s, 5.0))
        if self._unreported_drops:
            log.warning("impressions: dropped %d since the last report", self._unreported_drops)

    def _run(self) -> None:
        while not (self._give_up.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if batch:
                self._write(batch)
                with self._progress:
                    self._finished += len(batch)
                    self._progress.notify_all()

    def _next_batch(self) -> list[ServedList]:
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        if self._take_queued(batch) < MAX_BATCH_EVENTS:  # no backlog: let more lists gather first
            self._give_up.wait(BATCH_LINGER_S)
            self._take_queued(batch)
        return batch

    def _take_queued(self, batch: list[ServedList]) -> int:
        """Move queued lists into `batch` while it holds fewer than MAX_BATCH_EVENTS; its event count."""
        size = sum(len(served.item_ids) for served in batch)
        while size < MAX_BATCH_EVENTS:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
            size += len(batch[-1].item_ids)
        return size

    def _write(self, batch: list[ServedList]) -> None:
        events = [event for served in batch for event in served.events()]
        invalid = sum(len(served.item_ids) for served in batch) - len(events)
        if invalid:
            self._count("dropped", invalid)
        wait = RETRY_BACKOFF_S[0]
        while not self._give_up.is_set():
            try:
                result = ingest(self._store, self._event_log, events, claim=False)
            except OSError as exc:
                log.error("impressions: event log append failed (%s); retrying in %.2f s", exc, wait)
                self._give_up.wait(wait)
                wait = min(wait * 2, RETRY_BACKOFF_S[1])
                continue
            except Exception:  # a batch that cannot be written must cost its impressions, not the writer
                log.exception("impressions: dropping a batch of %d that could not be written", len(events))
                break
            self._count("logged", result.accepted)
            self._count("duplicate", result.duplicates)
            if result.degraded:
                self._count("not_applied", result.accepted)
            return
        with self._progress:
            self._drop(len(events), "shutting down" if self._give_up.is_set() else "write failed")

    def _drop(self, impressions: int, why: str) -> None:
        """Count dropped impressions; report them in one log line per interval. Caller holds `_progress`."""
        self._count("dropped", impressions)
        self._unreported_drops += impressions
        now = time.monotonic()
        if now - self._last_drop_report >= DROP_REPORT_INTERVAL_S:
            log.warning("impressions: dropped %d (%s; queue of %d served lists)",
                        self._unreported_drops, why, self._queue.maxsize)
            self._unreported_drops = 0
            self._last_drop_report = now
