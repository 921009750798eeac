"""The scheduler's run lock and the learner's revision store, on one redis-server and on the
3-master Redis Cluster, through the client `recsys scheduler` and `recsys learn` open
(`ConnectionSpec.client()`): a second holder is refused while the lock is held, and a publish
(one script over the role's keys, which share the hash tag `{role}`) is read back by a fresh
client with its history trimmed."""

from __future__ import annotations

import numpy as np

from feature_store.redis_client import ConnectionSpec
from models.online_revisions import RevisionStore
from services.scheduler.lock import RunLock


def test_one_run_lock_holder_at_a_time(redis_url: str) -> None:
    first, second = ConnectionSpec(redis_url).client(), ConnectionSpec(redis_url).client()
    try:
        holder, other = RunLock(first, "recsys:train:lock", 30), RunLock(second, "recsys:train:lock", 30)
        assert holder.acquire() and not other.acquire()
        assert holder.renew()
        holder.release()
        assert other.acquire()
        other.release()
    finally:
        first.close()
        second.close()


def test_revisions_publish_and_read_back(redis_url: str) -> None:
    writer, reader = ConnectionSpec(redis_url).client(), ConnectionSpec(redis_url).client()
    try:
        store = RevisionStore(writer, "recsys", history=2)
        weights = [np.full(3, float(n)) for n in range(3)]
        ids = [store.publish("v1", w, None, None, f"step {n}").id for n, w in enumerate(weights)]
        store.set_control(False, "drift")
        fresh = RevisionStore(reader, "recsys", history=2)
        assert fresh.poll("v1") == (ids[-1], ids[-1], fresh.control())
        assert fresh.control().enabled is False and fresh.control().reason == "drift"
        assert [r.id for r in fresh.history()] == ids[:0:-1]  # the oldest trimmed
        assert fresh.get(ids[0]) is None
        np.testing.assert_array_equal(fresh.current("v1").w, weights[-1])  # type: ignore[union-attr]
    finally:
        writer.close()
        reader.close()
