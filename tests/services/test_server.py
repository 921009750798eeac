"""The multi-worker launcher (`services.api.server`), with real uvicorn workers on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feature_store.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]


def start(port: int, workers: int, *options: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "services.api.server", "pid_app:app", "--app-dir", str(Path(__file__).parent),
               "--port", str(port), "--workers", str(workers), "--log-level", "warning", *options]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_until_serving(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"nothing serves on port {port}")


def answering_pids(port: int, connections: int) -> list[int]:
    """The worker pid behind each of `connections` fresh connections."""
    return [int(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text) for _ in range(connections)]


def wait_until_both_answer(server: subprocess.Popen[bytes], port: int, timeout_s: float = 60.0) -> None:
    """Until fresh connections reach every worker (a worker still starting gets none yet, and one
    that just died had its queued connections reset)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if set(answering_pids(port, 20)) == worker_pids(server):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "connections never reached every worker"
        time.sleep(0.2)


def worker_pids(server: subprocess.Popen[bytes]) -> set[int]:
    """The live workers: a killed one is a zombie (or gone) until the supervisor reaps it."""
    pids = set()
    for child in psutil.Process(server.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:  # ZombieProcess is one
            pass
    return pids


@pytest.fixture
def two_workers() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = start(port, 2, "--crash-loop-s", "0")  # any worker that dies is restarted: no wait past the guard
    wait_until_serving(port)
    yield server, port
    if server.poll() is None:
        server.terminate()
        server.wait(30)


def test_connections_spread_over_every_worker(two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    server, port = two_workers
    wait_until_both_answer(server, port)
    pids = answering_pids(port, 60)
    assert set(pids) == worker_pids(server)
    assert min(pids.count(pid) for pid in set(pids)) >= 10  # a hash spread, not one worker taking most


def test_a_second_server_on_the_same_port_is_refused(two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    _, port = two_workers
    second = start(port, workers=2)
    output, _ = second.communicate(timeout=60)
    assert second.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in output.decode()


def test_workers_stop_when_the_supervisor_is_killed(two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    server, _ = two_workers
    workers = [psutil.Process(pid) for pid in worker_pids(server)]
    server.kill()
    server.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    server, port = two_workers
    wait_until_both_answer(server, port)
    first = worker_pids(server)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    replaced = worker_pids(server)
    while time.monotonic() < deadline and not (len(replaced) == 2 and victim not in replaced):
        time.sleep(0.2)
        replaced = worker_pids(server)  # one snapshot per check: the victim may die between two
    assert victim not in replaced and len(replaced) == 2
    wait_until_both_answer(server, port)  # the new worker takes its share of connections

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in replaced)


@contextmanager
def recsys_api_with_two_workers(redis_url: str, state_dir: Path, **env: str) -> Iterator[str]:
    """The real API (`create_app_from_env`) under the launcher with 2 workers; yields its base URL."""
    port = free_port()
    environment = {**os.environ, "RECSYS_REDIS__URL": redis_url, "RECSYS_STATE_DIR": str(state_dir),
                   "TF_CPP_MIN_LOG_LEVEL": "2", **env}  # fmt: skip
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "services.api.server", "services.api.app:create_app_from_env", "--factory",
               "--port", str(port), "--workers", "2", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(port, timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def test_metrics_count_every_workers_requests(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    with recsys_api_with_two_workers(redis_server.url, tmp_path / "state") as base:
        # Fresh connections are spread over both workers (one still starting queues its share).
        for user in range(30):
            assert httpx.get(f"{base}/v1/users/u{user}/recommendations", timeout=60).status_code == 200
        for _ in range(6):  # whichever worker answers, the count is the service's
            exposition = httpx.get(f"{base}/metrics", timeout=60).text
            assert sample(exposition, "recsys_request_seconds_count", endpoint="/v1/users/{user_id}/recommendations") == 30


def sample(exposition: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                total += metric.value
    return total
