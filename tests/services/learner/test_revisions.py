"""The online-revision store on a real Redis: ids, parent and base kept, one pointer per base, a
bounded history, and the kill switch."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from models.online_revisions import RevisionStore


def test_publish_keeps_parent_base_and_weights_and_moves_the_base_pointer(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    assert store.current("v1") is None
    first = store.publish("v1", np.array([1.0, 2.0]), np.array([1.1, 1.9]), None, "start from the base")
    second = store.publish("v1", np.array([1.005, 1.995]), np.array([0.9, 2.1]), first.id, "explore won")
    other = store.publish("v2", np.array([3.0, 4.0]), None, None, "new base")
    assert first.id != second.id != other.id
    current = store.current("v1")
    assert current == second and current.parent == first.id and current.base == "v1"
    np.testing.assert_array_equal(current.weights, [1.005, 1.995])
    np.testing.assert_array_equal(current.explore_weights, [0.9, 2.1])
    assert store.current("v2") == other and other.explore is None
    assert [r.id for r in store.history()] == [other.id, second.id, first.id]  # newest first, every base's


def test_history_is_bounded_and_the_oldest_revisions_are_deleted(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t", history=3)
    ids = [store.publish("v1", np.array([float(n)]), None, None, f"step {n}").id for n in range(5)]
    assert [r.id for r in store.history()] == ids[:1:-1]
    assert store.get(ids[0]) is None and store.get(ids[1]) is None
    assert store.current("v1").id == ids[-1]
    assert redis_client.hlen("t:learn:{ranker}:rev") == 3


def test_bad_weights_are_refused(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    with pytest.raises(ValueError, match="finite"):
        store.publish("v1", np.array([np.nan]), None, None, "x")
    with pytest.raises(ValueError, match="shape"):
        store.publish("v1", np.array([1.0, 2.0]), np.array([1.0]), None, "x")
    assert store.history() == []


def test_the_kill_switch_is_shared_and_read_with_the_pointer(redis_client: redis.Redis) -> None:
    store, elsewhere = RevisionStore(redis_client, "t"), RevisionStore(redis_client, "t")
    assert store.control().enabled
    revision = store.publish("v1", np.array([1.0]), None, None, "start")
    store.set_control(False, "bad week")
    poll = elsewhere.poll("v1")
    assert poll.current == poll.newest == revision.id and not poll.control.enabled and poll.control.reason == "bad week"
    store.set_control(True, "fixed")
    assert elsewhere.poll("v1").control.enabled
