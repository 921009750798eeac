"""A process that starts an embedded Redis stops it however it is stopped: no orphaned redis-server,
and the final save keeps what was written since the last snapshot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from feature_store.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]

# Starts an embedded Redis the way every `recsys` process does, writes a key, then waits to be stopped.
# It restores Ctrl-C's handler: a test run started in the background (`cmd &` in a script) passes
# SIGINT down ignored, and Python then never raises KeyboardInterrupt.
HOLDER = """
import signal, sys, time
import redis
signal.signal(signal.SIGINT, signal.default_int_handler)
from feature_store.redis_server import redis_url
from feature_store.settings import Settings

with redis_url(Settings(state_dir=sys.argv[1])) as url:
    redis.Redis.from_url(url).set("written-before-the-stop", "yes")
    print(url, flush=True)
    while True:
        time.sleep(1)
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}


StartHolder = Callable[[Path], tuple[subprocess.Popen[str], psutil.Process]]


@pytest.fixture
def start_holder() -> Iterator[StartHolder]:
    started: list[psutil.Process] = []

    def start(state_dir: Path) -> tuple[subprocess.Popen[str], psutil.Process]:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], cwd=ROOT, env=clean_env(),
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        started.append(psutil.Process(holder.pid))
        assert holder.stdout is not None and holder.stdout.readline().startswith("redis://")  # blocks until it serves
        server = embedded_redis_of(holder.pid)
        started.append(server)
        return holder, server

    yield start
    for process in started:  # a failed test leaves nothing running
        if not exited(process):
            process.kill()


def embedded_redis_of(pid: int) -> psutil.Process:
    servers = [child for child in psutil.Process(pid).children(recursive=True) if "redis-server" in child.name()]
    assert len(servers) == 1, servers
    return servers[0]


def exited(process: psutil.Process) -> bool:
    """Gone, or a zombie nobody reaped yet (a container's init may never reap it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_stopped_with_a_final_save(server: psutil.Process, state_dir: Path) -> None:
    deadline = time.monotonic() + 60
    while not exited(server):
        assert time.monotonic() < deadline, "the embedded redis-server outlived the process that started it"
        time.sleep(0.1)
    reopened = EmbeddedRedis(state_dir / "redis").start()
    try:
        assert redis.Redis.from_url(reopened.url).get("written-before-the-stop") == b"yes"
    finally:
        reopened.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_embedded_redis(tmp_path: Path, start_holder: StartHolder, stop: signal.Signals) -> None:
    holder, server = start_holder(tmp_path)
    holder.send_signal(stop)
    holder.wait(timeout=60)
    assert_stopped_with_a_final_save(server, tmp_path)


def test_ctrl_c_to_the_process_group_leaves_the_final_save_to_the_owner(tmp_path: Path, start_holder: StartHolder) -> None:
    """A terminal sends SIGINT to the whole foreground group; Redis must not race its owner's stop."""
    holder, server = start_holder(tmp_path)
    assert os.getpgid(server.pid) != os.getpgid(holder.pid)
    holder.send_signal(signal.SIGINT)
    holder.wait(timeout=60)
    assert_stopped_with_a_final_save(server, tmp_path)


def test_the_embedded_redis_stops_when_its_owner_is_killed(tmp_path: Path, start_holder: StartHolder) -> None:
    holder, server = start_holder(tmp_path)
    holder.kill()
    holder.wait()
    assert_stopped_with_a_final_save(server, tmp_path)
