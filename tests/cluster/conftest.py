"""A real 3-master Redis Cluster on loopback, and a fixture that runs a test on one server and on it."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from feature_store.redis_server import EmbeddedRedis, find_redis_server, free_port


@dataclass
class RedisClusterProcesses:
    """Three `redis-server --cluster-enabled yes` masters with the 16384 slots split between them."""

    data_dir: Path
    ports: list[int] = field(default_factory=lambda: [_cluster_port() for _ in range(3)])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 30.0) -> "RedisClusterProcesses":
        server = find_redis_server()
        for port in self.ports:
            node_dir = self.data_dir / str(port)
            node_dir.mkdir(parents=True)
            self.processes.append(subprocess.Popen([
                server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--appendonly", "no", "--save", "", "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log"),
            ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True))
        clients = [redis.Redis(port=port, socket_connect_timeout=0.2) for port in self.ports]
        _until(lambda: all(self._answers(c, k) for k, c in enumerate(clients)), timeout_s,
               "the cluster nodes to answer")
        per_node = 16384 // len(self.ports)
        for k, client in enumerate(clients):
            last = 16383 if k == len(clients) - 1 else (k + 1) * per_node - 1
            client.execute_command("CLUSTER ADDSLOTS", *range(k * per_node, last + 1))
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        _until(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients), timeout_s,
               "cluster_state:ok on every node")
        for client in clients:
            client.close()
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def flush(self) -> None:
        client = RedisCluster.from_url(self.url.replace("redis+cluster", "redis"))
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        client.close()

    def _answers(self, client: redis.Redis, node: int) -> bool:
        if self.processes[node].poll() is not None:
            log = self.data_dir / str(self.ports[node]) / "redis.log"
            raise RuntimeError(f"cluster node on port {self.ports[node]} exited: {log.read_text()[-2000:]}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000, fixed in Redis 6) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    pass


def _until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def redis_url(request: pytest.FixtureRequest, redis_server: EmbeddedRedis) -> Iterator[str]:
    """The URL of an empty store: the session's single redis-server, or the 3-master cluster."""
    if request.param == "single":
        client = redis.Redis.from_url(redis_server.url)
        client.flushdb()
        client.close()
        yield redis_server.url
        return
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    cluster.flush()
    yield cluster.url
