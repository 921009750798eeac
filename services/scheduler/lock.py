"""The run lock: one training run at a time across every scheduler, and every manual `recsys train
run`, sharing a Redis.

redis-py's `Lock` (SET key token NX PX ttl; release and extend by a Lua script that checks the
token), held with a short TTL and renewed while the run goes on, so a scheduler that dies frees
the lock within `scheduler.lock_ttl_s` instead of blocking every later tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from redis.cluster import RedisCluster
from redis.exceptions import LockError

from feature_store.redis_client import RedisClient

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


class LockKeeper:
    """Renews the run lock every third of its TTL; `keep()` is False once the lock is lost, or when
    it could expire before this holder would notice: not confirmed for two thirds of the TTL, with
    a renewal that may block for the client's socket timeout counted in. Called every `retry_s` or
    more often by the holder (the scheduler's run loop, a manual run's renewer)."""

    def __init__(self, lock: RunLock, ttl_s: float, socket_timeout_s: float,
                 on_renewed: Callable[[], None] = lambda: None, retry_s: float = 1.0) -> None:  # fmt: skip
        self.lock, self.ttl_s, self.socket_timeout_s = lock, ttl_s, socket_timeout_s
        self.on_renewed, self.retry_s = on_renewed, retry_s
        self.renewed = time.monotonic()
        self.due = self.renewed + ttl_s / 3

    def keep(self) -> bool:
        now = time.monotonic()
        limit = 2 * self.ttl_s / 3
        if now - self.renewed + self.socket_timeout_s >= limit:
            return False
        if now < self.due:
            return True
        held = self.lock.renew()
        now = time.monotonic()
        if held:
            self.renewed, self.due = now, now + self.ttl_s / 3
            self.on_renewed()
            return True
        self.due = now + self.retry_s  # not answered: try again soon
        return held is None and now - self.renewed + self.socket_timeout_s < limit


def socket_timeout_s(client: RedisClient) -> float:
    """How long one Redis call of `client` may block (0 when the client does not say): a cluster
    client has no pool of its own but opens each master's with its nodes manager's options."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
    else:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    return float(kwargs.get("socket_timeout") or 0.0)


@contextmanager
def holding(client: redis.Redis, key: str, ttl_s: float, on_lost: Callable[[], None]) -> Iterator[None]:
    """Hold the lock on `key` for the block, kept by a thread with the scheduler's rule
    (`LockKeeper`); `on_lost()` when it is lost or can no longer be confirmed in time (the caller
    stops its run: another may take the lock then); `TrainingLockHeld` when another holds it."""
    lock = RunLock(client, key, ttl_s)
    if not lock.acquire():
        raise TrainingLockHeld(f"another training run holds the lock {key} (a scheduler's or a manual one): "
                               "wait until it ends (`recsys train history`)")
    keeper = LockKeeper(lock, ttl_s, socket_timeout_s(client))
    done = threading.Event()

    def keep() -> None:
        while not done.wait(keeper.retry_s):
            if not keeper.keep():
                log.error("training lock %s lost: stopping this run (resume it with recsys train run --resume)", key)
                on_lost()
                return

    keeper_thread = threading.Thread(target=keep, name="training-lock", daemon=True)
    keeper_thread.start()
    try:
        yield
    finally:
        done.set()
        try:
            keeper_thread.join()
        finally:
            lock.release()
