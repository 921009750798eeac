"""PDGD's shown-list writer never blocks a request: a full queue, or a Redis it cannot reach, drops
the list and reports every drop to the API's Prometheus counter; an API worker starts its thread
only when the learner is PDGD."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry, Counter

from feature_store.redis_server import free_port
from feature_store.settings import LearnerSettings
from models.online_revisions import RevisionStore
from services.learner.serving import LearnerServing
from services.learner.shown import ShownList, ShownStore, ShownWriter


def _list(request_id: str) -> ShownList:
    return ShownList("u1", request_id, "r1", ("a", "b"), np.ones((2, 3)), np.zeros(2), 0.5)


def _counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    return Counter("shown_dropped", "dropped", registry=registry), registry


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    counter, registry = _counter()
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    writer = ShownWriter(ShownStore(unreachable, "t", 60), queue_size=2, on_drop=counter.inc)  # not started: nothing drains
    for n in range(5):
        writer.submit(_list(f"req-{n}"))
    assert writer.dropped == 3
    assert registry.get_sample_value("shown_dropped_total") == 3.0


def test_lists_lost_to_an_unreachable_redis_are_counted() -> None:
    counter, registry = _counter()
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    writer = ShownWriter(ShownStore(unreachable, "t", 60), queue_size=10, on_drop=counter.inc)
    writer.start()
    for n in range(4):
        writer.submit(_list(f"req-{n}"))
    writer.flush()
    writer.close()
    assert writer.dropped == 4
    assert registry.get_sample_value("shown_dropped_total") == 4.0


@pytest.mark.parametrize(("algorithm", "running"), [("dbgd", False), ("pdgd", True)])
def test_a_worker_starts_the_writer_thread_only_for_pdgd(redis_client: redis.Redis, algorithm: str, running: bool) -> None:
    writer = ShownWriter(ShownStore(redis_client, "t", 60), queue_size=10)
    serving = LearnerServing(RevisionStore(redis_client, "t"), LearnerSettings(algorithm=algorithm), lambda: None, shown=writer)
    serving.start()
    try:
        assert writer.running is running
    finally:
        serving.stop()
    assert not writer.running
