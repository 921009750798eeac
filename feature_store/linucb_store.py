"""LinUCB statistics per item (disjoint model), in Redis: read by requests, updated by the stream job.

For item i with context vectors x (dimension d) of its attributed impressions and rewards r
(1: clicked, 0: not), Li, Chu, Langford & Schapire (WWW 2010, "A contextual-bandit approach to
personalized news article recommendation", Algorithm 1) keep

    A_i = λ·I_d + Σ x xᵀ,        b_i = Σ r · x

The store keeps A_i⁻¹ instead of A_i, updated by the Sherman–Morrison identity (`linucb_update`),
so that a request scores 200 candidates with matrix-vector products and no solve. An item without
statistics reads as ((1/λ)·I_d, 0). An update is applied once per update id (a replay marker, like
the attribution store's), so a stream job that replays after a restart adds nothing. An item's
statistics live `STATS_TTL_MS` (30 days) after its last update: an item not shown that long starts
again from the prior, and impressions a client logs for ids outside the catalog (the stream job
learns from any impression whose policy names LinUCB) cannot grow Redis without bound.

Upgrade: a key written before A⁻¹ was kept holds `A`; a read inverts it, and the item's next
update replaces it by `Ainv` (nothing to run).

The context x of an update is the one the request used: a request served by LinUCB saves its
user's context with its time (`save_context`, the API's only write here), and the stream job,
once an impression's attribution window has closed, takes the user's newest context at or before
the impression's time (`context_at`) and adds (x, clicked or not) to the item (`learn`). Contexts
live `context_ttl` (the attribution window plus the stream job's allowed lateness plus an hour of
slack): a stream job further behind than that skips those updates (tally `linucb_no_context`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import redis

from feature_store.definitions import FEATURES, Entity
from feature_store.redis_client import ConnectionSpec, on_slot, translate_errors
from feature_store.redis_layout import KeyLayout
from feature_store.settings import Settings

MAX_DIM = 32
#: The item feature whose vectors make the context (the items' category signatures, written by the
#: batch layer: `pipelines.spark.jobs.batch_features.category_signature`).
CONTEXT_FEATURE = "embedding"
CONTEXT_SLACK_MS = 3_600_000
STATS_TTL_MS = 30 * 86_400_000


def context_dim() -> int:
    """d: the dimension of the context feature."""
    return int(FEATURES.get(Entity.ITEM, CONTEXT_FEATURE).dim or 0)


def context_ttl_ms(settings: Settings) -> int:
    """How long a request's context is kept: until the stream job has surely finalised its impressions."""
    return int(settings.attribution.window_s * 1000) + settings.flink.allowed_lateness_ms + CONTEXT_SLACK_MS


#: How an impression served by LinUCB spells its explorer in `policy` (`services.explore`'s labels).
POLICY_MARK = "explore=linucb("


def served_by_linucb(policy: str | None) -> bool:
    """Whether an impression's policy label says LinUCB chose the slot."""
    return policy is not None and POLICY_MARK in policy


def linucb_update(A_inv: np.ndarray, b: np.ndarray, x: np.ndarray, reward: float) -> tuple[np.ndarray, np.ndarray]:
    """((A + x xᵀ)⁻¹, b + reward · x) from (A⁻¹, b): one observation added to one item's statistics.

    Sherman–Morrison (1950): (A + x xᵀ)⁻¹ = A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x), O(d²) per
    update; A is symmetric positive definite, so the denominator is ≥ 1.
    """
    z = A_inv @ x
    return A_inv - np.outer(z, z) / (1.0 + float(x @ z)), b + reward * x


class LinUcbStore(ABC):
    """Per-item (A, b) of disjoint LinUCB."""

    def __init__(self, dim: int, ridge: float = 1.0) -> None:
        if not 1 <= dim <= MAX_DIM or ridge <= 0:
            raise ValueError(f"dim must be in [1, {MAX_DIM}] and ridge > 0, got {dim}, {ridge}")
        self.dim = dim
        self.ridge = ridge

    @abstractmethod
    def read(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A⁻¹ (n, d, d) and b (n, d), aligned with `item_ids`."""

    def close(self) -> None:
        """Release connections (none by default)."""

    @abstractmethod
    def update(self, update_id: str, item_id: str, x: np.ndarray, reward: float) -> bool:
        """Add one attributed outcome (context x, reward) to an item; False if `update_id` was applied before."""

    @abstractmethod
    def save_context(self, user_id: str, ts_ms: int, x: np.ndarray, ttl_ms: int) -> None:
        """Remember the context a request of `user_id` used at `ts_ms` (kept `ttl_ms`)."""

    @abstractmethod
    def context_at(self, user_id: str, ts_ms: int) -> np.ndarray | None:
        """The user's newest saved context at or before `ts_ms`; None if none is kept."""


class RedisLinUcbStore(LinUcbStore):
    """`LinUcbStore` on Redis: one hash per item; updates are optimistic transactions (WATCH)."""

    def __init__(self, spec: ConnectionSpec, dim: int, ridge: float = 1.0, marker_ttl_s: float = 172_800.0) -> None:
        super().__init__(dim, ridge)
        self._spec = spec
        self._layout = KeyLayout(spec.key_prefix)
        self._marker_ttl_ms = int(marker_ttl_s * 1000)
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self._spec.client()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def read(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with translate_errors(self._spec, f"reading LinUCB statistics of {len(item_ids)} items"):
            pipe = self.client.pipeline(transaction=False)
            for item_id in item_ids:
                pipe.hmget(self._layout.linucb(item_id), "Ainv", "b", "A")
            rows = pipe.execute()
        A_inv = np.tile(np.eye(self.dim) / self.ridge, (len(item_ids), 1, 1))
        b = np.zeros((len(item_ids), self.dim))
        for n, row in enumerate(rows):
            if row[1] is not None:
                A_inv[n], b[n] = self._decode(*row)
        return A_inv, b

    def update(self, update_id: str, item_id: str, x: np.ndarray, reward: float) -> bool:
        x = self._checked(x)
        key, marker = self._layout.linucb(item_id), self._layout.linucb_marker(item_id, update_id)

        def apply(pipe: redis.client.Pipeline) -> bool:
            if pipe.exists(marker):
                return False
            row = pipe.hmget(key, "Ainv", "b", "A")
            A_inv, b = self._decode(*row) if row[1] is not None else (np.eye(self.dim) / self.ridge, np.zeros(self.dim))
            A_inv, b = linucb_update(A_inv, b, x, reward)
            pipe.multi()
            pipe.hset(key, mapping={"Ainv": A_inv.tobytes(), "b": b.tobytes()})
            pipe.hdel(key, "A")
            pipe.pexpire(key, STATS_TTL_MS)
            pipe.set(marker, 1, px=self._marker_ttl_ms)
            return True

        def transaction(conn: redis.Redis) -> bool:
            return bool(conn.transaction(apply, key, marker, value_from_callable=True))

        with translate_errors(self._spec, f"updating the LinUCB statistics of {item_id}"):
            return on_slot(self.client, key, transaction)

    def save_context(self, user_id: str, ts_ms: int, x: np.ndarray, ttl_ms: int) -> None:
        x = self._checked(x)
        key = self._layout.linucb_context(user_id)
        with translate_errors(self._spec, f"saving the LinUCB context of {user_id}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {ts_ms.to_bytes(8, "big") + x.tobytes(): ts_ms})
            pipe.zremrangebyscore(key, "-inf", f"({ts_ms - ttl_ms}")
            pipe.pexpire(key, ttl_ms)
            pipe.execute()

    def context_at(self, user_id: str, ts_ms: int) -> np.ndarray | None:
        with translate_errors(self._spec, f"reading the LinUCB context of {user_id}"):
            found = self.client.zrevrangebyscore(self._layout.linucb_context(user_id), ts_ms, "-inf", start=0, num=1)
        if not found or len(found[0]) != 8 + 8 * self.dim:
            return None
        return np.frombuffer(found[0][8:], dtype=np.float64).copy()

    def _checked(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"context of shape {x.shape}, expected ({self.dim},)")
        return x

    def _decode(self, inv_raw: bytes | None, b_raw: bytes, a_raw: bytes | None) -> tuple[np.ndarray, np.ndarray]:
        """(A⁻¹, b) of a stored item: `Ainv`, or the inverse of an older key's `A`."""
        matrix_raw = inv_raw if inv_raw is not None else a_raw
        if matrix_raw is None:
            raise ValueError("stored LinUCB statistics without A or A⁻¹")
        matrix, b = np.frombuffer(matrix_raw, dtype=np.float64), np.frombuffer(b_raw, dtype=np.float64)
        if matrix.size != self.dim * self.dim or b.size != self.dim:
            raise ValueError(f"stored LinUCB statistics of dimension {b.size}, expected {self.dim}")
        matrix = matrix.reshape(self.dim, self.dim)
        return (matrix.copy() if inv_raw is not None else np.linalg.inv(matrix)), b.copy()
