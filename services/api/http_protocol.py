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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

TIMEOUT_MESSAGE = b"Request not received in time."


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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_client(self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_client(self._reject_incomplete_request)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._await_client(self._close)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._await_client(self._close)

    def on_message_complete(self) -> None:
        self._stop_waiting()
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
        if self.transport.is_closing():
            return
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        self.transport.write(
            STATUS_LINE[408] + headers + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(TIMEOUT_MESSAGE) + TIMEOUT_MESSAGE
        )  # fmt: skip
        self.transport.close()
