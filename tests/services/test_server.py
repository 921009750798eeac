"""The multi-worker launcher (`services.api.server`), with real uvicorn workers on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from feature_store.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def start(port: int, workers: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "services.api.server", "pid_app:app", "--app-dir", str(Path(__file__).parent),
               "--port", str(port), "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
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


def worker_pids(server: subprocess.Popen[bytes]) -> set[int]:
    return {child.pid for child in psutil.Process(server.pid).children() if "resource_tracker" not in " ".join(child.cmdline())}


@pytest.fixture
def two_workers() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = start(port, workers=2)
    wait_until_serving(port)
    yield server, port
    if server.poll() is None:
        server.terminate()
        server.wait(30)


def test_connections_spread_over_every_worker(two_workers: tuple[subprocess.Popen[bytes], int]) -> None:
    server, port = two_workers
    time.sleep(1.0)  # both workers listening, not just the first
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
    time.sleep(11.0)  # past the crash-loop guard: a worker dying now is restarted
    first = worker_pids(server)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (len(worker_pids(server)) == 2 and victim not in worker_pids(server)):
        time.sleep(0.2)
    replaced = worker_pids(server)
    assert victim not in replaced and len(replaced) == 2
    time.sleep(1.0)
    assert set(answering_pids(port, 40)) == replaced

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in replaced)
