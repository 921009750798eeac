"""Redis connections with timeouts set and no silent retries, and the translation of their failures.

A `ConnectionSpec` is small and picklable, so Spark executors and Flink workers carry it and open
their own connection (one per worker), never the driver's.

The URL's scheme picks the client: `redis://` / `rediss://` / `unix://` a single server,
`redis+cluster://host:port` / `rediss+cluster://host:port` a Redis Cluster (any node as the seed;
the client discovers the others and routes each command to the master of its key's slot).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar, Union

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AskError, RedisClusterException
from redis.retry import Retry

from feature_store.errors import FeatureStoreUnavailableError
from feature_store.settings import Settings

#: Either client; both take the same commands, scripts and non-transactional pipelines.
RedisClient = Union[redis.Redis, RedisCluster]
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
T = TypeVar("T")


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach Redis: URL, timeouts and the key prefix."""

    url: str
    socket_timeout_s: float = 0.5
    connect_timeout_s: float = 0.5
    key_prefix: str = "recsys"

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> "ConnectionSpec":
        """From `settings.redis`; `url` overrides it (e.g. the embedded server's URL)."""
        resolved = url or settings.redis.url
        if not resolved:
            raise ValueError("no Redis URL: set RECSYS_REDIS__URL / REDIS_URL or start one with redis_url(settings)")
        return cls(resolved, settings.redis.socket_timeout_s, settings.redis.connect_timeout_s,
                   settings.redis.key_prefix)

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
        return self.url.split("://", 1)[0] in CLUSTER_SCHEMES

    def client(self) -> RedisClient:
        """A new client. Connections open lazily; failures surface as `FeatureStoreUnavailableError`
        through `translate_errors`, after at most the configured timeouts (no retries)."""
        options = dict(socket_timeout=self.socket_timeout_s, socket_connect_timeout=self.connect_timeout_s,
                       retry_on_timeout=False)
        if self.cluster:
            scheme, rest = self.url.split("://", 1)
            # A cluster client does follow MOVED/ASK redirections (slot migrations), but does not
            # retry a node that is down: that is the same no-silent-retries rule as below.
            return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", cluster_error_retry_attempts=0,
                                         **options)
        return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **options)


def slot_client(client: RedisClient, key: str) -> redis.Redis:
    """The client to run a MULTI (or WATCH/MULTI) transaction on `key`'s slot: `client` itself on
    one server; on a cluster, whose client runs no transactions, the connection to the master that
    owns the slot, so every key of the transaction must share it (a hash tag). Run transactions
    through `on_slot`, which follows a slot that moved."""
    if isinstance(client, RedisCluster):
        return client.get_node_from_key(key).redis_connection  # type: ignore[no-any-return]
    return client


def on_slot(client: RedisClient, key: str, transaction: Callable[[redis.Redis], T]) -> T:
    """`transaction` run on `slot_client(client, key)`. On a cluster, after a resharding or a
    failover the master the client remembers answers MOVED (ASK while the slot migrates) or not at
    all, and a node connection follows no redirection: then the slot map is read again and
    `transaction` runs once more, on the slot's owner. It must be safe to repeat (a replay marker,
    or a write of the whole state): a connection may break after the master applied it."""
    try:
        return transaction(slot_client(client, key))
    except (AskError, redis.ConnectionError) as exc:  # MovedError is an AskError
        if not isinstance(client, RedisCluster) or not _rerouted(client, key, exc):
            raise
    return transaction(slot_client(client, key))


def _rerouted(client: RedisCluster, key: str, failure: Exception) -> bool:
    """Whether a retry may succeed once the slot map is read again: after a redirection, yes; after
    a connection failure only if the slot now has another owner (no retry of a node that is down)."""
    before = client.get_node_from_key(key).name
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, RedisClusterException):
        return False
    return not isinstance(failure, redis.ConnectionError) or client.get_node_from_key(key).name != before


@contextmanager
def translate_errors(spec: ConnectionSpec, doing: str) -> Iterator[None]:
    """Turn connection failures and timeouts into `FeatureStoreUnavailableError` naming what failed."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError) as exc:
        raise FeatureStoreUnavailableError(
            f"Redis at {spec.url} unavailable while {doing} "
            f"(connect timeout {spec.connect_timeout_s}s, socket timeout {spec.socket_timeout_s}s): {exc}"
        ) from exc
