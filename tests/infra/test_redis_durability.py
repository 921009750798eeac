"""The Redis that docker-compose.yml and infra/k8s/redis.yaml deploy, run here with their exact
command line (a real `redis-server`): speed-layer counts, LinUCB statistics and replay markers
exist only in Redis, while Flink's checkpoints are already past the events that made them, so a
crash (SIGKILL: an OOM kill, a lost node) must not lose the writes since the last snapshot."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from feature_store.redis_server import find_redis_server, free_port

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60


def compose_command() -> list[str]:
    return list(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"])


def kubernetes_command() -> list[str]:
    for document in yaml.safe_load_all((ROOT / "infra/k8s/redis.yaml").read_text()):
        if document["kind"] == "StatefulSet":
            (container,) = document["spec"]["template"]["spec"]["containers"]
            return list(container["args"])
    raise AssertionError("no StatefulSet in infra/k8s/redis.yaml")


def test_compose_and_kubernetes_run_redis_alike() -> None:
    assert compose_command() == kubernetes_command()
    assert compose_command()[0] == "redis-server"


def start(command: list[str], data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """The deployed command line on a loopback port, its data in `data_dir` (the image's /data)."""
    return subprocess.Popen(
        [find_redis_server(), *command[1:], "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(data_dir), "--daemonize", "no", "--logfile", str(data_dir / "redis.log")],
    )  # fmt: skip


def connect(port: int, server: subprocess.Popen[bytes]) -> redis.Redis:
    """A client once the server answers (after loading its data)."""
    client = redis.Redis(port=port, socket_timeout=10)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            client.ping()
            return client
        except (redis.ConnectionError, redis.BusyLoadingError):
            assert server.poll() is None, "redis-server exited; see redis.log"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.1)


def aof_holds(data_dir: Path, key: bytes) -> bool:
    return any(key in path.read_bytes() for path in data_dir.rglob("*.aof"))


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for server in started:
        if server.poll() is None:
            server.kill()
        server.wait()


def test_the_deployed_redis_keeps_writes_since_the_last_snapshot_across_a_crash(
    tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    command, port = compose_command(), free_port()
    servers.append(start(command, tmp_path, port))
    client = connect(port, servers[-1])
    config: dict[str, Any] = client.config_get("*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
    assert config["save"] == "300 1" and config["maxmemory-policy"] == "noeviction"  # snapshots kept
    client.set("snapshotted", 1)
    client.save()
    client.incrby("attributed:clicks", 42)  # after the snapshot: only the append-only file has it
    deadline = time.monotonic() + DEADLINE_S  # appended at once, fsynced within a second
    while not aof_holds(tmp_path, b"attributed:clicks"):
        assert time.monotonic() < deadline, "the write never reached the append-only file"
        time.sleep(0.1)
    servers[-1].send_signal(signal.SIGKILL)
    servers[-1].wait()
    servers.append(start(command, tmp_path, port))
    client = connect(port, servers[-1])
    assert client.get("snapshotted") == b"1"
    assert client.get("attributed:clicks") == b"42"
