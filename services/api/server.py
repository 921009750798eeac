"""Run an ASGI app under uvicorn in worker processes, each with its own listening socket.

uvicorn's multi-worker mode shares one listening socket among the workers. Linux then hands a new
connection to whichever worker happens to be waiting in accept, and keep-alive pins every later
request of that connection to it: at 200 rps one worker ran at 70–83% of a core while the other
idled at 10–35%, and the busy one's queue made the tail (benchmarks/RESULTS.md). Here every worker
binds its own socket with SO_REUSEPORT, so the kernel spreads connections over the workers by a
hash of their addresses (as gunicorn's `--reuse-port` and nginx's `reuseport` do).

Workers share a Prometheus multi-process directory, so `/metrics` counts every worker's requests
whichever worker answers it. The supervisor restarts a worker that dies while serving, gives up
when one fails at startup, and on SIGINT/SIGTERM asks every worker to shut down gracefully
(uvicorn finishes requests in flight).
A worker that is still starting already owns its socket, so its share of new connections waits
until it is ready; connections queued on a worker that dies are reset.

    python -m services.api.server services.api.app:create_app_from_env --factory --port 8000 --workers 2
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from feature_store.processes import die_with_parent
from services.api.http_protocol import ReadTimeoutProtocol
from services.api.metrics import MULTIPROCESS_DIR_ENV

log = logging.getLogger("recsys.server")

STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup fails
CRASH_LOOP_S = 10.0  # a worker that dies sooner than this after its start is not restarted
BACKLOG = 2048  # uvicorn's default


@dataclass(frozen=True)
class ServerOptions:
    """What every worker runs: an app ("module:attribute") and where it listens."""

    app: str
    host: str
    port: int
    factory: bool = False
    app_dir: str | None = None  # put first on sys.path in each worker, like `uvicorn --app-dir`
    log_level: str = "info"
    graceful_shutdown_s: int = 10
    keep_alive_timeout_s: float = 5.0
    request_read_timeout_s: float = 20.0  # services.api.http_protocol
    crash_loop_s: float = CRASH_LOOP_S


def serve_app(options: ServerOptions, workers: int) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    import uvicorn

    if workers == 1 or not hasattr(socket, "SO_REUSEPORT"):  # the latter: not Linux/BSD
        if options.app_dir is not None:
            sys.path.insert(0, options.app_dir)
        uvicorn.run(options.app, workers=workers, **_uvicorn_options(options))
        return 0
    _check_port_free(options.host, options.port)
    with _shared_metrics_dir():
        return _Supervisor(options, workers).run()


@contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers (services.api.metrics), unless one is set:
    then, as with gunicorn, wiping it between runs is the operator's job."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="recsys-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR_ENV] = directory  # spawned workers inherit it
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR_ENV]


def _check_port_free(host: str, port: int) -> None:
    """SO_REUSEPORT would let a second server (an old instance still running) share the port
    silently; a plain bind fails instead while anyone holds it."""
    family, kind, protocol, address = _address(host, port)
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as error:
            raise SystemExit(f"cannot listen on {host}:{port}: {error}") from None


class _Supervisor:
    def __init__(self, options: ServerOptions, workers: int) -> None:
        self.options = options
        self.workers = workers
        self.context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked TF/faiss state
        self.processes: list[BaseProcess] = []
        self.started_at: list[float] = []
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        for _ in range(self.workers):
            self._start()
        exit_code = 0
        try:
            while not self.stopping:
                multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=0.5)
                exit_code = self._replace_dead_workers()
                if exit_code:
                    break
        finally:
            self._shutdown()
        return exit_code

    def _start(self, slot: int | None = None) -> None:
        process = self.context.Process(target=_run_worker, args=(self.options,), name="recsys-worker", daemon=False)
        process.start()
        if slot is None:
            self.processes.append(process)
            self.started_at.append(time.monotonic())
        else:
            self.processes[slot], self.started_at[slot] = process, time.monotonic()

    def _replace_dead_workers(self) -> int:
        """Restart workers that died while serving; a non-zero code when one cannot start."""
        for slot, process in enumerate(self.processes):
            if process.is_alive() or self.stopping:
                continue
            code = process.exitcode
            lived = time.monotonic() - self.started_at[slot]
            if code == STARTUP_FAILURE or lived < self.options.crash_loop_s:
                log.error("worker %s exited with code %s %.1f s after its start; stopping", process.pid, code, lived)
                return code or 1
            log.warning("worker %s exited with code %s; starting a new one", process.pid, code)
            mark_process_dead(process.pid)  # its live gauges leave /metrics; its counts stay
            self._start(slot)
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + self.options.graceful_shutdown_s + 5.0
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()


def _run_worker(options: ServerOptions) -> None:
    """One worker: its own SO_REUSEPORT socket, then uvicorn on it."""
    import uvicorn

    _stop_with_parent()
    if options.app_dir is not None:
        sys.path.insert(0, options.app_dir)
    try:
        listener = _listening_socket(options.host, options.port)
    except OSError as error:
        logging.basicConfig(level=logging.INFO)
        log.error("cannot listen on %s:%s: %s", options.host, options.port, error)
        sys.exit(STARTUP_FAILURE)
    config = uvicorn.Config(options.app, **_uvicorn_options(options))
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; uvicorn has shut down already
        pass


def _stop_with_parent() -> None:
    """Ask Linux for SIGTERM when the supervisor dies, even by SIGKILL: an orphaned worker would
    keep serving on the port, and a new server could not start beside it."""
    die_with_parent(signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():  # it died before the request took hold
        sys.exit(1)


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, protocol, address = _address(host, port)
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    listener.listen(BACKLOG)
    return listener


def _address(host: str, port: int) -> tuple[socket.AddressFamily, socket.SocketKind, int, tuple[object, ...]]:
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, kind, protocol, address


def _uvicorn_options(options: ServerOptions) -> dict[str, object]:
    return {
        "factory": options.factory, "host": options.host, "port": options.port, "log_level": options.log_level,
        "timeout_graceful_shutdown": options.graceful_shutdown_s, "backlog": BACKLOG,
        "timeout_keep_alive": options.keep_alive_timeout_s,
        "http": functools.partial(ReadTimeoutProtocol, read_timeout_s=options.request_read_timeout_s),
        "loop": "uvloop", "access_log": False,  # per-request CPU: the API is CPU-bound
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", help='"module:attribute" of the ASGI app (or of its factory, with --factory)')
    parser.add_argument("--factory", action="store_true", help="the attribute is a function returning the app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--app-dir", default=None)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle connection stays open")
    parser.add_argument("--request-read-timeout", type=float, default=20.0,
                        help="seconds a client may take to send a request's headers, or pause within its body")
    parser.add_argument("--crash-loop-s", type=float, default=CRASH_LOOP_S,
                        help="a worker dying sooner than this after its start stops the server instead of restarting")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    options = ServerOptions(args.app, args.host, args.port, args.factory, args.app_dir, args.log_level,
                            keep_alive_timeout_s=args.keep_alive_timeout,
                            request_read_timeout_s=args.request_read_timeout, crash_loop_s=args.crash_loop_s)  # fmt: skip
    sys.exit(serve_app(options, args.workers))


if __name__ == "__main__":
    main()
