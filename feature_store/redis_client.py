"""Redis connections with timeouts set and no silent retries, and the translation of their failures.

A `ConnectionSpec` is small and picklable, so Spark executors and Flink workers carry it and open
their own connection (one per worker), never the driver's.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feature_store.errors import FeatureStoreUnavailableError
from feature_store.settings import Settings


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

    def client(self) -> redis.Redis:
        """A new client. Connections open lazily; failures surface as `FeatureStoreUnavailableError`
        through `translate_errors`, after at most the configured timeouts (no retries)."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=self.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )


@contextmanager
def translate_errors(spec: ConnectionSpec, doing: str) -> Iterator[None]:
    """Turn connection failures and timeouts into `FeatureStoreUnavailableError` naming what failed."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise FeatureStoreUnavailableError(
            f"Redis at {spec.url} unavailable while {doing} "
            f"(connect timeout {spec.connect_timeout_s}s, socket timeout {spec.socket_timeout_s}s): {exc}"
        ) from exc
