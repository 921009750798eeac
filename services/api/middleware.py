"""ASGI middleware: request ids, per-endpoint latency metrics, and the request body size limit."""

from __future__ import annotations

import json
import re
import time
import uuid


from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import ApiMetrics

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
            body_receive = await self._buffer_body(scope, receive)
        except _BodyTooLarge:
            await self._reject_too_large(send_with_id, request_id)
        else:
            await self.app(scope, body_receive, send_with_id)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path_format", None) or "unmatched"  # `{id}`, not `{id:path}`
            self.metrics.request_latency.labels(scope["method"], endpoint, str(status["code"])).observe(
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

    async def _reject_too_large(self, send: Send, request_id: str) -> None:
        body = json.dumps({"error": {
            "code": "payload_too_large",
            "message": f"request body exceeds {self.max_body_bytes} bytes",
            "request_id": request_id,
        }}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


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
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


