"""`recsys serve` as a real process on embedded Redis: how it stops, and how it starts again after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from feature_store.event_log import EventLogReader
from feature_store.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """One `recsys serve` process with its own state directory and log."""

    def __init__(self, state_dir: Path, workers: int, log_level: str = "warning", env: dict[str, str] | None = None) -> None:
        self.state_dir, self.port = state_dir, free_port()
        self.log = state_dir.parent / f"serve-{self.port}.log"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}, **(env or {})}
        command = [sys.executable, "-c", "from services.cli import app; app()", "serve", "--port", str(self.port),
                   "--workers", str(workers), "--state-dir", str(state_dir), "--log-level", log_level]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
                                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.tree = psutil.Process(self.process.pid)

    def wait_until_serving(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve never answered: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def embedded_redis(self) -> psutil.Process:
        servers = [child for child in self.tree.children(recursive=True) if "redis-server" in child.name()]
        assert len(servers) == 1, servers
        return servers[0]

    def processes(self) -> list[psutil.Process]:
        return [self.tree, *self.tree.children(recursive=True)]


def exited(process: psutil.Process) -> bool:
    """Gone, or a zombie nobody reaped yet (a container's init may never reap it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_exited(processes: list[psutil.Process], timeout_s: float = 60.0) -> list[psutil.Process]:
    """The processes still running after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in processes if not exited(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[psutil.Process] = []

    def start(workers: int = 1, log_level: str = "warning") -> Serve:
        server = Serve(tmp_path / "state", workers, log_level)
        started.append(server.tree)
        server.wait_until_serving()
        started.extend(server.processes())
        return server

    yield start
    for process in started:  # a failed test leaves nothing running
        if not exited(process):
            process.kill()


@pytest.mark.parametrize(("workers", "stop"), [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT)])
def test_a_stop_signal_stops_serve_and_its_embedded_redis(
    serve: Callable[..., Serve], workers: int, stop: signal.Signals
) -> None:
    server = serve(workers)
    everything = server.processes()
    assert any("redis-server" in p.name() for p in everything)
    server.process.send_signal(stop)
    server.process.wait(timeout=60)
    assert not wait_exited(everything), "processes outlived recsys serve"
    assert (server.state_dir / "redis" / "dump.rdb").is_file()  # the final save


def test_serve_with_two_workers_starts_again_after_a_crash(serve: Callable[..., Serve]) -> None:
    """Both workers of the new server recover the dead one's event-log files at once."""
    first = serve(workers=2)
    posted = [f"e{n}" for n in range(40)]
    for event_id in posted:  # a fresh connection each: both workers take events and hold open files
        event = {"event_id": event_id, "user_id": "u1", "item_id": "i1", "type": "click", "ts": "2024-03-01T10:00:00Z"}
        assert httpx.post(f"http://127.0.0.1:{first.port}/v1/events", json=[event], timeout=60).status_code == 202
    everything = first.processes()
    for process in reversed(everything):  # workers before their supervisor, so none stops gracefully
        process.kill()
    assert not wait_exited(everything), "processes outlived the killed server"
    events = first.state_dir / "events"
    orphans = list(events.glob("dt=*/hr=*/.part-*.inprogress"))
    assert orphans, "the crash should leave in-progress files"

    second = serve(workers=2, log_level="info")
    deadline = time.monotonic() + 180
    while second.log.read_text().count("Application startup complete") < 2:
        assert second.process.poll() is None, second.log.read_text()[-3000:]
        assert time.monotonic() < deadline, second.log.read_text()[-3000:]
        time.sleep(0.2)
    assert not [orphan for orphan in orphans if orphan.exists()]
    assert {e.event_id for e in EventLogReader(events).read()} == set(posted)
