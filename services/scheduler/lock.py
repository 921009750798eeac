"""The run lock: one training run at a time across every scheduler sharing a Redis.

redis-py's `Lock` (SET key token NX PX ttl; release and extend by a Lua script that checks the
token), held with a short TTL and renewed while the run goes on, so a scheduler that dies frees
the lock within `scheduler.lock_ttl_s` instead of blocking every later tick.
"""

from __future__ import annotations

import logging

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)


class RunLock:
    """A non-blocking lock on `key` that expires `ttl_s` after its last renewal."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        self._lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)

    def acquire(self) -> bool:
        """True when this holder got the lock; False when another holds it."""
        return bool(self._lock.acquire(blocking=False))

    def renew(self) -> bool | None:
        """Reset the TTL: True; False (and a log line) when the lock was lost meanwhile; None when
        Redis did not answer, so whether it is still held cannot be told (the caller decides how
        long to wait: until the TTL would run out, the lock is still this holder's)."""
        try:
            self._lock.reacquire()
            return True
        except LockError as exc:
            log.error("training lock lost while a run was going on: %s", exc)
            return False
        except redis.RedisError as exc:
            log.warning("training lock not renewed, Redis did not answer: %s", exc)
            return None

    def release(self) -> None:
        try:
            self._lock.release()
        except LockError as exc:  # expired and maybe taken by another scheduler: not ours to free
            log.warning("training lock already gone at release: %s", exc)
        except redis.RedisError as exc:  # it expires by itself within its TTL
            log.warning("training lock not released, Redis did not answer: %s", exc)
