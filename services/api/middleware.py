"""ASGI middleware: request ids, per-endpoint latency metrics, the request body size limit, and
URLs whose percent-escapes are not UTF-8 refused (400): decoded with replacement characters, `caf%E9`
and `caf%E8` would both name the id `caf\ufffd`, one user's or item's data served for another's."""

from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import unquote_to_bytes


from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import ApiMetrics

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Methods counted under their own name; any other a client sends (the server parses PROPFIND,
#: PURGE, ...: 34 of them) is counted as `other`, so clients cannot add latency series at will.
COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    """Assigns `request.state.request_id` (honouring a sane `X-Request-ID`), enforces the body
    limit before the app reads anything (413), and records latency per route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if not _utf8_url(scope):
                await _send_error(send_with_id, 400, "invalid_url", "the URL's percent-escapes are not UTF-8", request_id)
                return
            body_receive = await self._buffer_body(scope, receive)
        except _BodyTooLarge:
            await _send_error(send_with_id, 413, "payload_too_large", f"request body exceeds {self.max_body_bytes} bytes",
                              request_id)  # fmt: skip
        else:
            await self.app(scope, body_receive, send_with_id)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path_format", None) or "unmatched"  # `{id}`, not `{id:path}`
            method = scope["method"] if scope["method"] in COUNTED_METHODS else "other"
            self.metrics.request_latency.labels(method, endpoint, str(status["code"])).observe(
                time.perf_counter() - started
            )

    async def _buffer_body(self, scope: Scope, receive: Receive) -> Receive:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay([message])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)

async def _send_error(send: Send, status: int, code: str, message: str, request_id: str) -> None:
    """The API's JSON error body (`services.api.errors`), from the middleware, before any route ran."""
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _utf8_url(scope: Scope) -> bool:
    """Whether the path and the query string decode to UTF-8 once their %-escapes are undone."""
    path = scope.get("raw_path") or scope.get("path", "").encode()
    try:
        unquote_to_bytes(path).decode("utf-8")
        unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


