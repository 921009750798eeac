"""Domain errors that know their HTTP status, and handlers that never leak a stack trace."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from feature_store.redis_server import RedisUnavailableError
from services.recommend.types import DegradedError, UnreadableEntryError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(ApiError):
    status_code = 404
    code = "not_found"


class UnauthorizedError(ApiError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(ApiError):
    status_code = 403
    code = "forbidden"


class UnprocessableError(ApiError):
    """Well-formed input the service will not store (e.g. catalog metadata past its bounds)."""

    status_code = 422
    code = "validation_error"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "payload_too_large"


class ServiceUnavailableError(ApiError):
    status_code = 503
    code = "unavailable"


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_body(request: Request, code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id_of(request)}
    if details is not None:
        error["details"] = details
    return {"error": error}


def install_error_handlers(app: FastAPI) -> None:
    """Every error response is `{"error": {code, message, request_id, details?}}`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status_code == 401 else None
        return JSONResponse(error_body(request, exc.code, exc.message, exc.details), exc.status_code, headers)

    def unavailable(request: Request) -> JSONResponse:
        return JSONResponse(error_body(request, "unavailable", "online store unavailable; retry later"), 503)

    @app.exception_handler(DegradedError)
    async def _degraded(request: Request, exc: DegradedError) -> JSONResponse:
        # Reads that can degrade (recommendations) catch it themselves; what reaches here cannot.
        return unavailable(request)

    @app.exception_handler(RedisUnavailableError)
    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A read with no degraded answer (an experiment's report, its page): retry, as for the catalog.
        # Only Redis not answering: an error it answers with (OOM, WRONGTYPE) is a bug, left to `_unexpected`.
        log.warning("Redis unavailable in %s %s: %s", request.method, request.url.path, exc)
        return unavailable(request)

    @app.exception_handler(UnreadableEntryError)
    async def _unreadable(request: Request, exc: UnreadableEntryError) -> JSONResponse:
        # 409: the request is fine; the entry it names must be PUT again (the message says so).
        return JSONResponse(error_body(request, "stored_entry_unreadable", str(exc)), 409)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"location": ".".join(str(part) for part in error["loc"]), "message": error["msg"], "type": error["type"]}
            for error in exc.errors()
        ]
        message = "; ".join(f"{d['location']}: {d['message']}" for d in details[:5])
        return JSONResponse(error_body(request, "validation_error", message, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(request, f"http_{exc.status_code}", str(exc.detail)), exc.status_code, exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id_of(request))
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(kind="unhandled").inc()
        # Sent by Starlette's outermost middleware, outside the one that adds the header to the rest.
        request_id = request_id_of(request)
        return JSONResponse(error_body(request, "internal_error", "internal error; quote the request_id"), 500,
                            {"X-Request-ID": request_id} if request_id else None)
