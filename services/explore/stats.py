"""Reads the statistics a policy needs from the feature store, for one request.

- `ItemCounts` (UCB1, Thompson): the attribution store's `examined_counts` over `explore.stats_window`,
  one Redis round trip.
- `LinearStats` (LinUCB): (A_i⁻¹, b_i) from `feature_store.linucb_store`, and the context x_t: the
  user's vector, the L2-normalised mean of the item `embedding` feature (Item2vec, d = 32) over
  the user's recent items, the same for every candidate (Li et al.'s disjoint model with user
  features); a user without history has x_t = 0, and LinUCB then keeps the ranker's order. The
  request saves x_t with its time for the user (`LinUcbStore.save_context`), so that the stream
  job updates the statistics with the context the request used. The history items' embeddings are
  cached like the statistics (they change only when a batch view is published); x_t itself is per
  request.

Per-item statistics are cached per worker for `explore.stats_cache_s` in the request path's
per-item cache (`services.recommend.item_cache.ItemCache`), served stale while refreshed in the
background for at most as long again: a value served at time t reflects the store as it was at
some time in [t − 2·stats_cache_s, t] (bandits tolerate delayed feedback: Chapelle & Li, NIPS
2011, measure Thompson sampling and UCB with feedback applied in delayed batches). A refresh that
fails (Redis down) leaves the entries to age past the bound, and the request's own read then
fails, which serves greedy. At most `explore.stats_cache_items` entries per cache.

Any failure to read (Redis down or slow, statistics that do not decode) is `StatsUnavailable`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import redis

from feature_store.attribution_store import RedisAttributionStore, window_bounds
from feature_store.definitions import Entity
from feature_store.errors import FeatureStoreUnavailableError
from feature_store.linucb_store import CONTEXT_FEATURE, CONTEXT_SLACK_MS, LinUcbStore
from feature_store.online_store import OnlineStore
from services.explore.policy import ItemCounts, LinearStats, triangle
from services.recommend.item_cache import Clock, ItemCache, Submit

T = TypeVar("T")
log = logging.getLogger(__name__)
LINEAR_READ_CHUNK = 25  # LinUCB items per round trip: ~0.3 ms of parsing and decoding between GIL releases


class StatsUnavailable(RuntimeError):
    """The statistics could not be read; the stage serves the greedy list instead."""


@contextmanager
def _unavailable_on_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (FeatureStoreUnavailableError, redis.RedisError, ValueError) as exc:
        raise StatsUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def _in_order(found: Mapping[str, T], item_ids: Sequence[str]) -> list[T]:
    """`found`'s values for `item_ids` (the cache keeps the caller's order: with distinct ids, as is)."""
    return list(found.values()) if len(found) == len(item_ids) else [found[item_id] for item_id in item_ids]


class BanditStats:
    """The per-request reads of the explore stage (one instance per worker; clients made on first use)."""

    def __init__(self, features: OnlineStore, attribution: RedisAttributionStore, linucb: LinUcbStore,
                 window: str = "7d", context_ttl_ms: int = CONTEXT_SLACK_MS, cache_s: float = 0.0,
                 cache_items: int = 5000, clock: Clock = time, submit: Submit | None = None) -> None:
        self.features = features
        self.attribution = attribution
        self.linucb = linucb
        self.window = window
        self.context_ttl_ms = context_ttl_ms
        self._counts: ItemCache[tuple[float, float]] = self._cache(cache_s, cache_items, clock, submit, "counts")
        self._linear: ItemCache[bytes] = self._cache(cache_s, cache_items, clock, submit, "linucb")
        self._embeddings: ItemCache[np.ndarray] = self._cache(cache_s, cache_items, clock, submit, "context")
        self._warned_no_context = False  # logged once per process: a missing writer, not a per-request event
        self._closed = False

    @staticmethod
    def _cache(ttl_s: float, items: int, clock: Clock, submit: Submit | None, what: str) -> ItemCache:
        # Candidates cached together expire together: no pause to gather more expired items.
        return ItemCache(ttl_s, items, max_stale_s=ttl_s, gather_s=0.0, clock=clock, submit=submit,
                         name=f"explore-{what}-refresh")

    def close(self) -> None:
        """Close the caches and clients; a later read is `StatsUnavailable` (it would open new
        ones that nobody closes: a request may still hold the stage of an experiment just stopped)."""
        self._closed = True
        self._counts.close()
        self._linear.close()
        self._embeddings.close()
        self.attribution.close()
        self.linucb.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StatsUnavailable("closed: its explore stage was released")

    def counts(self, item_ids: Sequence[str]) -> ItemCounts:
        self._check_open()
        with _unavailable_on_errors("reading examined counts"):
            rows = _in_order(self._counts.get_many(item_ids, self._read_counts), item_ids)
        flat = np.fromiter(itertools.chain.from_iterable(rows), float, count=2 * len(rows))
        examined, clicks = flat.reshape(len(rows), 2).T
        return ItemCounts(examined, clicks)

    def linear(self, item_ids: Sequence[str], history: Sequence[str], user_id: str | None = None) -> LinearStats:
        """The candidates' statistics (`LinearStats`, packed from (A_i⁻¹, b_i)) and x_t; saves x_t for
        `user_id` (when given) for the stream job."""
        self._check_open()
        with _unavailable_on_errors("reading LinUCB statistics"):
            rows = _in_order(self._linear.get_many(item_ids, self._read_linear), item_ids)
            user = self.user_vector(history)
            if user_id is not None:
                self.linucb.save_context(user_id, int(time.time() * 1000), user, self.context_ttl_ms)
        width = self.linucb.dim + len(triangle(self.linucb.dim)[0])
        return LinearStats.from_packed(np.frombuffer(b"".join(rows), np.float64).reshape(len(rows), width), user)

    def _read_counts(self, item_ids: list[str]) -> dict[str, tuple[float, float]]:  # also from the cache's refresh thread
        since_ms, until_ms = window_bounds(self.window)
        counts = self.attribution.examined_counts(item_ids, since_ms, until_ms)
        return dict(zip(item_ids, zip(counts.examined.tolist(), counts.clicks.tolist())))

    def _read_linear(self, item_ids: list[str]) -> dict[str, bytes]:
        """Per item, the row of `LinearStats.pack` (θ_i and the quadratic form's coefficients,
        d + d(d+1)/2 floats, computed here and not per request) as immutable bytes: a request joins
        its candidates' rows with one `bytes.join` (a third of `np.concatenate`'s time over 200
        arrays, and with the GIL held: numpy lets it go for each row, and a waiting thread takes
        it) and scores them with two dot products each.

        Read `LINEAR_READ_CHUNK` items per round trip. The cache's background refresh runs this on
        its own thread, holding the GIL while it parses and decodes, and each round trip releases
        it (benchmarks/RESULTS.md, issue 19)."""
        out: dict[str, bytes] = {}
        for start in range(0, len(item_ids), LINEAR_READ_CHUNK):
            chunk = item_ids[start:start + LINEAR_READ_CHUNK]
            packed = LinearStats.pack(*self.linucb.read(chunk))
            out.update((item_id, packed[n].tobytes()) for n, item_id in enumerate(chunk))
        return out

    def _read_embeddings(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        column = self.features.get_features(Entity.ITEM, item_ids, [CONTEXT_FEATURE])[CONTEXT_FEATURE]
        return {item_id: np.asarray(vector, dtype=float) for item_id, vector in zip(item_ids, column)}

    def user_vector(self, history: Sequence[str]) -> np.ndarray:
        """x_t: the normalised mean context vector (category signature) of the user's recent items
        (zeros without any)."""
        if not history:
            return np.zeros(self.linucb.dim)
        found = self._embeddings.get_many(history, self._read_embeddings)
        vectors = np.stack([found[item_id] for item_id in history])
        if vectors.shape[1] != self.linucb.dim:
            raise ValueError(f"item embeddings of dimension {vectors.shape[1]}, LinUCB expects {self.linucb.dim}")
        mean = vectors.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm == 0 and not self._warned_no_context:
            self._warned_no_context = True
            log.warning("LinUCB: the history items have no `%s` vectors in the feature store (no batch view "
                        "published yet?), so the context is zero and LinUCB serves the ranker's order without "
                        "learning", CONTEXT_FEATURE)
        return mean / norm if norm > 0 else mean
