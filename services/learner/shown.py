"""What PDGD needs of a served list and the event log does not hold: the shown items' penultimate
features, their scores and the candidates' Plackett–Luce normaliser, kept in Redis by user and
request id.

Why not in the impressions: 80 floats per slot would multiply the event log (the master dataset,
kept forever) for a record the learner needs once, within the attribution window. Why one key per
request and not a stream: the learner joins a finished comparison to its list by user and request
id, one GET, and a record it never read (the learner was down, or the list got no click) expires on its own;
a stream would need a consumer that buffers every entry for the attribution window.

Key `P:learn:shown:<digest>`, the first 32 hex digits of the sha256 of the user id and the request
id (a user's request: two users may send one request id; a fixed length whatever the ids), value
a JSON header line `{"revision", "items", "scores", "log_total", "dim"}` and the features as
float32 bytes `[k, dim]`, with a TTL (`learner.shown_ttl_s`, longer than the attribution window,
which the learner waits out before it reads). Memory: about `k · dim · 4` bytes per learning-share
request (3.2 kB for k = 10 and DIN's 80 hidden units) times requests per TTL.

API workers write through `ShownWriter`: a bounded queue and one background thread (the impression
logger's pattern), so a request never waits on Redis for it; a full queue drops the record and
counts it (the learner then skips that list and counts it as missing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from feature_store.redis_client import RedisClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShownList:
    """One served PDGD list: shown items (slot order), their features [k, dim] and scores under the
    serving revision's weights, and `log Σ exp(score)` over every ranked candidate."""

    user_id: str
    request_id: str
    revision: str
    items: tuple[str, ...]
    features: np.ndarray
    scores: np.ndarray
    log_total: float

    def encode(self) -> bytes:
        header = {"revision": self.revision, "items": list(self.items), "scores": self.scores.tolist(),
                  "log_total": self.log_total, "dim": int(self.features.shape[1])}
        return json.dumps(header).encode() + b"\n" + np.ascontiguousarray(self.features, dtype=np.float32).tobytes()

    @classmethod
    def decode(cls, user_id: str, request_id: str, raw: bytes) -> "ShownList":
        head, body = raw.split(b"\n", 1)
        header = json.loads(head)
        features = np.frombuffer(body, dtype=np.float32).reshape(len(header["items"]), header["dim"])
        scores = np.asarray(header["scores"], dtype=np.float64)
        if scores.shape != (len(header["items"]),):
            raise ValueError(f"{scores.size} scores for {len(header['items'])} items")
        return cls(user_id, request_id, str(header["revision"]), tuple(header["items"]), features.astype(np.float64),
                   scores, float(header["log_total"]))


class ShownStore:
    """Shown lists by (user id, request id), each with a TTL."""

    def __init__(self, client: RedisClient, key_prefix: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.client = client
        self.prefix = f"{key_prefix}:learn:shown:"
        self.ttl_ms = int(ttl_s * 1000)

    def key(self, user_id: str, request_id: str) -> str:
        digest = hashlib.sha256(json.dumps([user_id, request_id]).encode()).hexdigest()[:32]
        return f"{self.prefix}{digest}"

    def write(self, lists: Sequence[ShownList]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for shown in lists:
            pipe.set(self.key(shown.user_id, shown.request_id), shown.encode(), px=self.ttl_ms)
        pipe.execute()

    def read(self, requests: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ShownList]:
        """The stored lists of `requests`, (user id, request id) pairs (an expired, never written or
        unreadable one is absent: the learner skips that list alone)."""
        pipe = self.client.pipeline(transaction=False)
        for user_id, request_id in requests:
            pipe.get(self.key(user_id, request_id))
        decoded = {request: _decoded(request, raw) for request, raw in zip(requests, pipe.execute()) if raw is not None}
        return {request: shown for request, shown in decoded.items() if shown is not None}


def _decoded(request: tuple[str, str], raw: bytes) -> ShownList | None:
    """The stored list of `request`, or None (logged) when it won't decode (corrupted, or written by
    another version)."""
    try:
        return ShownList.decode(*request, raw)
    except (ValueError, KeyError, TypeError) as error:
        log.warning("the shown list of user %s, request %s is unreadable (%r); skipped", *request, error)
        return None


class ShownWriter:
    """A bounded queue of shown lists and the thread that writes them to the `ShownStore`."""

    def __init__(self, store: ShownStore, queue_size: int, on_drop: Callable[[int], None] = lambda count: None) -> None:
        """`on_drop(count)`: told of every dropped list (the API counts them on /metrics)."""
        self.store = store
        self.dropped = 0
        self.on_drop = on_drop
        self._queue: queue.Queue[ShownList | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="shown-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive (started and not closed)."""
        return self._thread.is_alive()

    def submit(self, shown: ShownList) -> None:
        """Queue a list (never blocks: a full queue drops it and counts it)."""
        try:
            self._queue.put_nowait(shown)
        except queue.Full:
            self._drop(1)

    def flush(self) -> None:
        """Wait until everything queued before this call is written (or failed)."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 100 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            lists = [shown for shown in batch if shown is not None]
            try:
                if lists:
                    self.store.write(lists)
            except Exception:  # Redis away: the lists are lost, the learner skips them (counted there)
                self._drop(len(lists))
                log.exception("writing %d shown lists for the learner failed", len(lists))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if None in batch:
                return

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.on_drop(count)
