"""Idle and half-sent connections are closed: a slow client holds no file descriptor for long.

Timeouts are set short (1 s) and the tests wait generously (30 s) for the server to close: they
check that it closes, not how fast."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from feature_store.redis_server import free_port
from services.api.http_protocol import MAX_HEAD_BYTES
from tests.services.test_serve_lifecycle import Serve
from tests.services.test_server import ROOT, wait_until_serving

GENEROUS_S = 30.0


def server_closes(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; fails if it never does."""
    connection.settimeout(GENEROUS_S)
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {GENEROUS_S:.0f} s; it sent {received!r}")
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "services.api.server", "pid_app:app", "--app-dir", str(Path(__file__).parent),
               "--port", str(port), "--workers", str(request.param), "--log-level", "warning",
               "--keep-alive-timeout", "1", "--request-read-timeout", "1"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_until_serving(port)
        yield port
    finally:
        server.terminate()
        server.wait(30)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S)


def test_a_connection_that_never_sends_is_closed(port: int) -> None:
    with connect(port) as connection:
        assert server_closes(connection) == b""


def test_half_sent_headers_get_408_and_a_close(port: int) -> None:
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")  # no blank line: the headers never end
        assert server_closes(connection).startswith(b"HTTP/1.1 408 ")


def test_a_half_sent_body_is_closed(port: int) -> None:
    with connect(port) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"half\":")
        assert b"HTTP/1.1 200" not in server_closes(connection)


def test_an_idle_keep_alive_connection_is_closed_after_its_response(port: int) -> None:
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert server_closes(connection).startswith(b"HTTP/1.1 200 ")


def test_a_request_sent_whole_is_answered(port: int) -> None:
    with connect(port) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert server_closes(connection).startswith(b"HTTP/1.1 200 ")


def test_recsys_serve_takes_the_timeouts_from_settings(tmp_path: Path) -> None:
    server = Serve(tmp_path / "state", workers=1,
                   env={"RECSYS_API__KEEP_ALIVE_TIMEOUT_S": "1", "RECSYS_API__REQUEST_READ_TIMEOUT_S": "1"})  # fmt: skip
    try:
        server.wait_until_serving()
        with connect(server.port) as idle, connect(server.port) as half_sent:
            half_sent.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            assert server_closes(idle) == b""
            assert server_closes(half_sent).startswith(b"HTTP/1.1 408 ")
    finally:
        server.process.terminate()
        server.process.wait(60)


def test_an_endless_header_gets_431_and_a_close_before_it_ends(port: int) -> None:
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Filler: ")
        sent = 0
        try:
            while sent < 64 * MAX_HEAD_BYTES:  # never ends on its own: the server must stop it
                connection.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us: what comes next says why
        assert sent < 64 * MAX_HEAD_BYTES, "the server read the whole header"
        answer = server_closes(connection)  # a reset for the bytes still in flight may swallow the answer
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
