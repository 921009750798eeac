"""API keys in the `X-API-Key` header: required for writes and admin, optionally for reads.

With no keys configured, writes and reads are open (local development) and admin endpoints are
refused: there is no way to authenticate an operator.
"""

from __future__ import annotations

import secrets

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from services.api.errors import ForbiddenError, UnauthorizedError

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key for writes and admin")


def _keys(request: Request) -> list[str]:
    return [key.get_secret_value() for key in request.app.state.settings.api.api_keys]


def _check(presented: str | None, keys: list[str]) -> None:
    if not presented:
        raise UnauthorizedError("missing API key: send it in the X-API-Key header")
    if not any(secrets.compare_digest(presented.encode(), key.encode()) for key in keys):
        raise UnauthorizedError("invalid API key")


async def require_read_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    keys = _keys(request)
    if keys and request.app.state.settings.api.require_key_for_reads:
        _check(key, keys)


async def require_write_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    keys = _keys(request)
    if keys:
        _check(key, keys)


async def require_admin_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> None:
    keys = _keys(request)
    if not keys:
        raise ForbiddenError("admin endpoints are disabled: no API keys are configured (settings.api.api_keys)")
    _check(key, keys)
