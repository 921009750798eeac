"""The run lock: one training run at a time across every scheduler, and every manual `recsys train
run`, sharing a Redis.

redis-py's `Lock` (SET key token NX PX ttl; release and extend by a Lua script that checks the
token), held with a short TTL and renewed while the run goes on, so a scheduler that dies frees
the lock within `scheduler.lock_ttl_s` instead of blocking every later tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


def training_lock_key(key_prefix: str) -> str:
    """The one training run lock of every scheduler and manual run sharing a Redis."""
    return f"{key_prefix}:training:lock"


class TrainingLockHeld(RuntimeError):
    """Another training run (a scheduler's, or a manual one) holds the lock."""


@contextmanager
def holding(client: redis.Redis, key: str, ttl_s: float) -> Iterator[None]:
    """Hold the lock on `key` for the block, renewed every third of `ttl_s` by a thread (a manual
    run: the scheduler keeps its own, `service._LockKeeper`, which also stops a run whose lock is
    lost); `TrainingLockHeld` when another holds it."""
    lock = RunLock(client, key, ttl_s)
    if not lock.acquire():
        raise TrainingLockHeld(f"another training run holds the lock {key} (a scheduler's or a manual one): "
                               "wait until it ends (`recsys train history`)")
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl_s / 3):
            lock.renew()  # a loss is logged; the run goes on (the scheduler's run would be killed)

    renewer = threading.Thread(target=renew, name="training-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        lock.release()
