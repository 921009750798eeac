"""Writes that a Redis Cluster client sends twice, on one redis-server and on the 3-master cluster.

redis-py's cluster pipeline silently re-sends a command whose reply timed out, and a master that
lost its script cache (restarted, promoted) answers NOSCRIPT to some calls of a pipeline while the
other masters run theirs: either way a command may reach Redis twice. The event claim and the
marker-guarded scripts must still count what this call did as done by it, not as a duplicate.
A master is stalled for real (`DEBUG SLEEP`) past the client's socket timeout, so the first send
times out and the re-send arrives while it sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import pytest
import redis

from feature_store.definitions import Entity
from feature_store.live_writes import LiveWriter
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec, RedisClient
from feature_store.schemas import Event
from services.recommend.intake import ingest
from services.recommend.online_store import ServingStore
from services.recommend.types import DegradedError
from tests.cluster.conftest import RedisClusterProcesses

SOCKET_TIMEOUT_S = 0.3
STALL_S = 0.45  # over the timeout once (the first send), under it twice (the re-send)


def _master_port(client: RedisClient, key: str) -> int:
    """The port of the server that holds `key` (a cluster's master of its slot, or the server)."""
    if isinstance(client, redis.Redis):
        return int(client.connection_pool.connection_kwargs["port"])
    return int(client.get_node_from_key(key).port)


def _stall(port: int, seconds: float = STALL_S) -> threading.Thread:
    """Put the server on `port` to sleep for `seconds`; returns once it has stopped answering."""
    sleeper = threading.Thread(target=lambda: redis.Redis(port=port).execute_command("DEBUG", "SLEEP", seconds))
    sleeper.start()
    probe = redis.Redis(port=port, socket_timeout=0.05)
    try:
        while True:
            probe.ping()
            time.sleep(0.005)
    except redis.TimeoutError:
        return sleeper
    finally:
        probe.close()


def _click(event_id: str, user_id: str) -> Event:
    return Event(event_id=event_id, user_id=user_id, item_id="m1", type="click", ts=datetime.now(timezone.utc))


class StallingLog:
    """An event log whose append (the step just before the claim) stalls the master of a key."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.appended: list[Event] = []
        self.sleepers: list[threading.Thread] = []

    def append(self, events: Sequence[Event]) -> None:
        self.appended.extend(events)
        self.sleepers.append(_stall(self.port))


class NullLog:
    def append(self, events: Sequence[Event]) -> None:
        pass


def _serving_store(url: str) -> ServingStore:
    spec = ConnectionSpec(url, socket_timeout_s=SOCKET_TIMEOUT_S)
    return ServingStore(spec.client(), RedisOnlineStore(spec), "recsys")


def test_a_claim_whose_first_send_timed_out_is_won_by_its_caller(redis_url: str) -> None:
    store = _serving_store(redis_url)
    key = store._key("evt", "evt-1")
    store.already_applied(["evt-1"])  # a pooled connection to its master, as `ingest` opens first
    sleeper = _stall(_master_port(store.client, key))
    try:
        won: set[str] | None = store.claim_events(["evt-1"])
    except DegradedError:  # one server: no re-send, the timeout surfaces
        won = None
    sleeper.join()
    # The cluster client re-sends the timed-out SET NX, which finds its own marker: still won.
    assert won == ({"evt-1"} if redis_url.startswith("redis+cluster") else None)
    assert store.claim_events(["evt-1"]) == set()  # another call's claim is still refused


def test_an_event_posted_while_its_claim_master_stalls_is_accepted_and_applied(redis_url: str) -> None:
    store = _serving_store(redis_url)
    ingest(store, NullLog(), [_click("warm", "bob")])  # connections open, scripts loaded
    log = StallingLog(_master_port(store.client, store._key("evt", "click-1")))
    result = ingest(store, log, [_click("click-1", "alice")])
    for sleeper in log.sleepers:
        sleeper.join()
    assert (result.accepted, result.duplicates) == (1, 0), result
    recent = RedisOnlineStore(ConnectionSpec(redis_url)).get_features(Entity.USER, ["alice"], ["recent_items"])
    assert list(recent["recent_items"][0]) == ["m1"]
    repeat = ingest(store, NullLog(), [_click("click-1", "alice")])
    assert (repeat.accepted, repeat.duplicates) == (0, 1)


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    redis_cluster.flush()
    return redis_cluster.url


def _flush_scripts_on_one_master(url: str) -> None:
    client = ConnectionSpec(url).client()
    client.get_primaries()[0].redis_connection.script_flush()  # type: ignore[union-attr]
    client.close()


def _events(tag: str, n: int) -> list[dict[str, str]]:
    now = datetime.now(timezone.utc).isoformat()
    return [{"event_id": f"{tag}{k}", "user_id": f"u{k}", "item_id": f"i{k}", "type": "click", "ts": now}
            for k in range(n)]


@pytest.mark.cluster
def test_live_writes_after_a_master_lost_its_scripts_are_applied_not_called_replays(cluster_url: str) -> None:
    writer = LiveWriter(ConnectionSpec(cluster_url), 3600, 60)
    assert writer.write(_events("warm", 30), item_categories={}).applied == 30
    _flush_scripts_on_one_master(cluster_url)
    result = writer.write(_events("fresh", 30), item_categories={})
    assert (result.applied, result.duplicates) == (30, 0), result
    assert writer.write(_events("fresh", 30), item_categories={}).duplicates == 30
