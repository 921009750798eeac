"""Reads the statistics a policy needs from the feature store, for one request.

- `ItemCounts` (UCB1, Thompson): the attribution store's `examined_counts` over `explore.stats_window`,
  one Redis round trip.
- `LinearStats` (LinUCB): (A_i⁻¹, b_i) from `feature_store.linucb_store`, and the context x_t: the
  user's vector, the L2-normalised mean of the item `embedding` feature (Item2vec, d = 32) over
  the user's recent items, the same for every candidate (Li et al.'s disjoint model with user
  features); a user without history has x_t = 0, and LinUCB then keeps the ranker's order. The
  request saves x_t with its time for the user (`LinUcbStore.save_context`), so that the stream
  job updates the statistics with the context the request used.

Per-item statistics are cached per worker for `explore.stats_cache_s` (`services.explore.cache`:
the staleness bound and the memory bound); the context is per request and never cached.

Any failure to read (Redis down or slow, statistics that do not decode) is `StatsUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import redis

from feature_store.attribution_store import RedisAttributionStore, window_bounds
from feature_store.definitions import Entity
from feature_store.errors import FeatureStoreUnavailableError
from feature_store.linucb_store import CONTEXT_FEATURE, CONTEXT_SLACK_MS, LinUcbStore
from feature_store.online_store import OnlineStore
from services.explore.cache import StatsCache
from services.explore.policy import ItemCounts, LinearStats


class StatsUnavailable(RuntimeError):
    """The statistics could not be read; the stage serves the greedy list instead."""


@contextmanager
def _unavailable_on_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (FeatureStoreUnavailableError, redis.RedisError, ValueError) as exc:
        raise StatsUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class BanditStats:
    """The per-request reads of the explore stage (one instance per worker; clients made on first use)."""

    def __init__(self, features: OnlineStore, attribution: RedisAttributionStore, linucb: LinUcbStore,
                 window: str = "7d", context_ttl_ms: int = CONTEXT_SLACK_MS, cache_s: float = 0.0,
                 cache_items: int = 5000, clock: Callable[[], float] = time.monotonic,
                 submit: Callable[[Callable[[], None]], object] | None = None) -> None:
        self.features = features
        self.attribution = attribution
        self.linucb = linucb
        self.window = window
        self.context_ttl_ms = context_ttl_ms
        self._counts = StatsCache(self._read_counts, cache_s, cache_items, clock, submit)
        self._linear = StatsCache(self._read_linear, cache_s, cache_items, clock, submit)

    def close(self) -> None:
        self._counts.close()
        self._linear.close()
        self.attribution.close()
        self.linucb.close()

    def counts(self, item_ids: Sequence[str]) -> ItemCounts:
        with _unavailable_on_errors("reading examined counts"):
            rows = self._counts.get_many(item_ids)
        examined, clicks = np.array(rows, dtype=float).reshape(len(item_ids), 2).T
        return ItemCounts(examined, clicks)

    def linear(self, item_ids: Sequence[str], history: Sequence[str], user_id: str | None = None) -> LinearStats:
        """(A_i⁻¹, b_i) per candidate and x_t; saves x_t for `user_id` (when given) for the stream job."""
        with _unavailable_on_errors("reading LinUCB statistics"):
            rows = self._linear.get_many(item_ids)
            user = self.user_vector(history)
            if user_id is not None:
                self.linucb.save_context(user_id, int(time.time() * 1000), user, self.context_ttl_ms)
        A_inv = np.stack([row[0] for row in rows]) if rows else np.zeros((0, self.linucb.dim, self.linucb.dim))
        b = np.stack([row[1] for row in rows]) if rows else np.zeros((0, self.linucb.dim))
        return LinearStats(A_inv, b, np.tile(user, (len(item_ids), 1)))

    def _read_counts(self, item_ids: list[str]) -> list[tuple[float, float]]:  # also from the cache's refresh thread
        since_ms, until_ms = window_bounds(self.window)
        counts = self.attribution.examined_counts(item_ids, since_ms, until_ms)
        return list(zip(counts.examined.tolist(), counts.clicks.tolist()))

    def _read_linear(self, item_ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        A_inv, b = self.linucb.read(item_ids)
        return [(A_inv[n].copy(), b[n].copy()) for n in range(len(item_ids))]  # a row view would keep the whole read alive

    def user_vector(self, history: Sequence[str]) -> np.ndarray:
        """x_t: the normalised mean embedding of the user's recent items (zeros without any)."""
        if not history:
            return np.zeros(self.linucb.dim)
        vectors = np.stack(self.features.get_features(Entity.ITEM, history, [CONTEXT_FEATURE])[CONTEXT_FEATURE]).astype(float)
        if vectors.shape[1] != self.linucb.dim:
            raise ValueError(f"item embeddings of dimension {vectors.shape[1]}, LinUCB expects {self.linucb.dim}")
        mean = vectors.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else mean
