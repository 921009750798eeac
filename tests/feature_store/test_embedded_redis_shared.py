"""One embedded Redis per state directory: a process that finds a live one recorded there uses it
instead of starting a second redis-server on the same data directory (which the API would never
see, and whose final save would overwrite the first one's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from feature_store.redis_server import EmbeddedRedis, redis_url
from feature_store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# Waits for a line on stdin (so several can start at once), takes the state directory's Redis,
# writes a key, prints its URL and what it read, then holds the Redis until stdin closes.
CLIENT = """
import sys
import redis
from feature_store.redis_server import redis_url
from feature_store.settings import Settings

sys.stdin.readline()
with redis_url(Settings(state_dir=sys.argv[1])) as url:
    client = redis.Redis.from_url(url)
    client.set("written-by-" + sys.argv[2], "yes")
    print(url, client.get("written-by-test"), flush=True)
    sys.stdin.read()
"""


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with no Redis URL, so `redis_url` uses the embedded server of `tmp_path`."""
    for name in list(os.environ):
        if name.startswith("RECSYS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return Settings(state_dir=tmp_path)


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """`CLIENT` processes started by a test, and every redis-server on `tmp_path`, stopped after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
    for server in servers_on(tmp_path):  # a failed test leaves nothing running
        server.kill()


def start_client(clients: list[subprocess.Popen[str]], state_dir: Path, name: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", CLIENT, str(state_dir), name], cwd=ROOT, env=clean_env(),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    clients.append(process)
    return process


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def answer(process: subprocess.Popen[str]) -> tuple[str, str]:
    """The URL a `CLIENT` got and what it read of the test's key (blocks until it serves)."""
    assert process.stdout is not None
    line = process.stdout.readline().split()
    assert line, f"the client exited with code {process.wait()}"
    return line[0], line[1]


def finish(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=60) == 0


def servers_on(state_dir: Path) -> list[psutil.Process]:
    """The live redis-server processes whose data directory (their working directory) is `state_dir`'s."""
    data_dir = str((state_dir / "redis").resolve())
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (process.info["name"] or "") and process.status() != psutil.STATUS_ZOMBIE \
                    and process.cwd() == data_dir:  # fmt: skip
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def record(state_dir: Path) -> dict[str, object]:
    return dict(json.loads((state_dir / "redis" / "server.json").read_text()))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_another_process_uses_the_live_server_of_the_state_dir(
    settings: Settings, tmp_path: Path, clients: list[subprocess.Popen[str]]
) -> None:
    with redis_url(settings) as url:
        redis.Redis.from_url(url).set("written-by-test", "yes")
        other = start_client(clients, tmp_path, "other")
        go(other)
        assert answer(other) == (url, "b'yes'")
        assert redis.Redis.from_url(url).get("written-by-other") == b"yes"
        assert [server.pid for server in servers_on(tmp_path)] == [record(tmp_path)["server_pid"]]
        finish(other)


def test_a_process_that_used_anothers_server_leaves_it_running(
    settings: Settings, tmp_path: Path, clients: list[subprocess.Popen[str]]
) -> None:
    with redis_url(settings) as url:
        other = start_client(clients, tmp_path, "other")
        go(other)
        assert answer(other)[0] == url
        finish(other)
        assert redis.Redis.from_url(url).get("written-by-other") == b"yes"  # still up, its data kept
        assert record(tmp_path) == {"url": url, "pid": os.getpid(), "server_pid": servers_on(tmp_path)[0].pid}
    assert not (tmp_path / "redis" / "server.json").exists()  # the owner forgets it when it stops it
    assert servers_on(tmp_path) == []


def test_after_the_owner_stops_the_next_process_starts_a_new_server(settings: Settings, tmp_path: Path) -> None:
    with redis_url(settings) as first:
        redis.Redis.from_url(first).set("kept", "yes")
    with redis_url(settings) as second:
        assert redis.Redis.from_url(second).get("kept") == b"yes"  # the new server loaded the final save
        assert record(tmp_path)["url"] == second
        assert len(servers_on(tmp_path)) == 1


def test_a_killed_owners_record_is_replaced(
    settings: Settings, tmp_path: Path, clients: list[subprocess.Popen[str]]
) -> None:
    owner = start_client(clients, tmp_path, "owner")
    go(owner)
    answer(owner)
    stale = record(tmp_path)
    owner.kill()
    owner.wait()
    with redis_url(settings) as url:
        assert redis.Redis.from_url(url).ping()
        assert record(tmp_path)["pid"] == os.getpid()
        servers = [server.pid for server in servers_on(tmp_path)]
        assert servers == [record(tmp_path)["server_pid"]] != [stale["server_pid"]]


@pytest.mark.parametrize("owner", ["dead", "alive"])
def test_a_record_of_a_server_that_is_not_this_state_dirs_is_replaced(
    settings: Settings, tmp_path: Path, redis_server: EmbeddedRedis, owner: str
) -> None:
    """A dead owner's pid, or a live pid (reused) with a URL where another data directory's Redis answers."""
    pid = dead_pid() if owner == "dead" else os.getpid()
    (tmp_path / "redis").mkdir()
    stale = {"url": redis_server.url, "pid": pid, "server_pid": pid}
    (tmp_path / "redis" / "server.json").write_text(json.dumps(stale))
    with redis_url(settings) as url:
        assert url != redis_server.url
        assert record(tmp_path)["url"] == url
        assert len(servers_on(tmp_path)) == 1


def test_two_processes_starting_at_once_share_one_server(tmp_path: Path, clients: list[subprocess.Popen[str]]) -> None:
    first, second = start_client(clients, tmp_path, "first"), start_client(clients, tmp_path, "second")
    go(first)
    go(second)
    (url, _), (other_url, _) = answer(first), answer(second)
    assert url == other_url
    assert len(servers_on(tmp_path)) == 1
    client = redis.Redis.from_url(url)
    assert (client.get("written-by-first"), client.get("written-by-second")) == (b"yes", b"yes")
