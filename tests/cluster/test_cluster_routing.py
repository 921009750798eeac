"""What a cluster client must know of the whole cluster, on the real 3-master Redis Cluster: a slot
that moved to another master (resharding; a failover looks the same to the client), every master's
health for readiness, and the socket timeout its masters' connections use (the scheduler's lock
safety check), the last one on one redis-server too."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from feature_store.cluster_scripts import hash_tag
from feature_store.linucb_store import RedisLinUcbStore
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.settings import Settings
from services.experiments.store import ExperimentStore
from services.recommend.online_store import ServingStore
from services.scheduler.lock import socket_timeout_s
from services.scheduler.service import TrainingScheduler
from tests.cluster.conftest import RedisClusterProcesses


def _owner(node: redis.Redis, slot: int) -> int:
    """The port of the master that owns `slot`, as `node` sees the cluster."""
    ranges = node.execute_command("CLUSTER SLOTS")
    return next(int(owner[1]) for first, last, owner, *_ in ranges if first <= slot <= last)


def _move_slot(cluster: RedisClusterProcesses, slot: int, to_port: int) -> int:
    """Move `slot` with its keys to the master on `to_port` (what a resharding does); its old owner's port."""
    nodes = {port: redis.Redis(port=port) for port in cluster.ports}
    ids = {port: node.execute_command("CLUSTER MYID").decode() for port, node in nodes.items()}
    source = _owner(nodes[to_port], slot)
    nodes[to_port].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    nodes[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
    keys = nodes[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    if keys:
        nodes[source].execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
    for node in nodes.values():
        node.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
        node.close()
    return source


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def reshard(redis_cluster: RedisClusterProcesses) -> Iterator:
    """Moves a key's slot to another master; moved back after the test, for the session's other tests."""
    moved: list[tuple[int, int]] = []

    def move(key: str) -> None:
        slot = key_slot(hash_tag(key).encode())
        with redis.Redis(port=redis_cluster.ports[0]) as node:
            owner = _owner(node, slot)
        target = next(port for port in redis_cluster.ports if port != owner)
        moved.append((slot, _move_slot(redis_cluster, slot, target)))

    yield move
    for slot, port in reversed(moved):
        _move_slot(redis_cluster, slot, port)


@pytest.mark.cluster
def test_linucb_updates_follow_an_item_whose_slot_moved(cluster_url: str, reshard) -> None:  # type: ignore[no-untyped-def]
    spec = ConnectionSpec(cluster_url)
    store = RedisLinUcbStore(spec, 2)
    assert store.update("u0", "hot", np.ones(2), 1.0)
    reshard(KeyLayout(spec.key_prefix).linucb("hot"))
    assert store.update("u1", "hot", np.ones(2), 1.0)
    assert not store.update("u1", "hot", np.ones(2), 1.0)  # its replay marker moved with it
    _, b = RedisLinUcbStore(spec, 2).read(["hot"])
    np.testing.assert_allclose(b[0], [2.0, 2.0])


@pytest.mark.cluster
def test_the_experiments_mirror_follows_its_slot(cluster_url: str, reshard, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ExperimentStore(tmp_path, ConnectionSpec(cluster_url).client(), "recsys")
    store.mirror()
    version = store.client.get("recsys:x:{x}:version")
    reshard("recsys:x:{x}:defs")
    store.mirror()
    assert ConnectionSpec(cluster_url).client().get("recsys:x:{x}:version") not in (None, version)


@pytest.mark.cluster
def test_readiness_asks_every_master(redis_cluster: RedisClusterProcesses, cluster_url: str) -> None:
    client = ConnectionSpec(cluster_url, socket_timeout_s=0.3, connect_timeout_s=0.3).client()
    store = ServingStore(client, None, "recsys")  # type: ignore[arg-type]
    assert store.ping()
    other = next(n for n, port in enumerate(redis_cluster.ports) if port != client.get_default_node().port)
    os.kill(redis_cluster.processes[other].pid, signal.SIGSTOP)  # a master that answers nothing
    try:
        assert not store.ping()
    finally:
        os.kill(redis_cluster.processes[other].pid, signal.SIGCONT)
    assert store.ping()


def test_the_scheduler_counts_the_socket_timeout_of_a_cluster_client(settings: Settings, redis_url: str) -> None:
    client = replace(ConnectionSpec(redis_url), socket_timeout_s=10.0).client()
    assert socket_timeout_s(client) == 10.0
    short = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update={"lock_ttl_s": 20.0})})
    with pytest.raises(ValueError, match="lock_ttl_s"):  # a renewal blocked 10 s could outlast the lock
        TrainingScheduler(short, client, command=["true"])  # type: ignore[arg-type]
