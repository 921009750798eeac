"""uvicorn's httptools protocol with a request-read timeout.

uvicorn times out only the pause after a response (`timeout_keep_alive`, until the next request's
first byte). A connection that never sends a request, or sends part of one and stops, stays open
for good, holding a file descriptor and an event-loop slot (slowloris). Here a timer runs while
the server waits for a client's bytes:

- from the connection's opening, and from a request's first byte, until its headers are complete:
  on expiry a request that had begun gets `408 Request Timeout`, then the connection is closed;
- while the body arrives, from one chunk to the next: on expiry the connection is closed, and the
  app, waiting on the body, receives `http.disconnect`.

No timer runs while the app works on a request or after the response (uvicorn's keep-alive
timeout covers that), so a slow endpoint is never cut off by it.

httptools buffers a request line and headers whole, without a limit: a client sending one endless
header grew the worker's memory by its size. Past `MAX_HEAD_BYTES` before its headers end, a
request gets `431 Request Header Fields Too Large` and the connection is closed (a GET's URL, with
`exclude` at its documented limits of 500 ids of 128 characters, stays well under it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

TIMEOUT_MESSAGE = b"Request not received in time."
MAX_HEAD_BYTES = 256 * 1024
HEAD_TOO_LARGE_MESSAGE = b"Request line and headers over 256 KiB."


class ReadTimeoutProtocol(HttpToolsProtocol):
    """Pass as uvicorn's `http` with the timeout bound: `functools.partial(ReadTimeoutProtocol,
    read_timeout_s=…)` (a partial pickles, so spawned workers can take it)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        read_timeout_s: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_timeout_s = read_timeout_s
        self.read_timer: asyncio.TimerHandle | None = None
        self.head_bytes: int | None = 0  # bytes of the request line and headers so far; None in a body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_client(self._close)

    def data_received(self, data: bytes) -> None:
        if self.head_bytes is not None:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._stop_waiting()
                self._refuse(431, HEAD_TOO_LARGE_MESSAGE)
                return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_client(self._reject_incomplete_request)

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        super().on_headers_complete()
        self._await_client(self._close)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._await_client(self._close)

    def on_message_complete(self) -> None:
        self._stop_waiting()
        self.head_bytes = 0  # the next request's head
        super().on_message_complete()

    def _await_client(self, on_timeout: Callable[[], None]) -> None:
        self._stop_waiting()
        self.read_timer = self.loop.call_later(self.read_timeout_s, on_timeout)

    def _stop_waiting(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _close(self) -> None:
        self.read_timer = None
        self.transport.close()

    def _reject_incomplete_request(self) -> None:
        self.read_timer = None
        self._refuse(408, TIMEOUT_MESSAGE)

    def _refuse(self, status: int, message: bytes) -> None:
        """Answer `status` with a plain-text `message` and close: the request is not read further."""
        if self.transport.is_closing():
            return
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        self.transport.write(
            STATUS_LINE[status] + headers + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(message) + message
        )  # fmt: skip
        self.transport.close()
