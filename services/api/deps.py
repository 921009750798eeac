"""Dependencies as `Annotated` aliases, so route signatures read like prose.

They are `async def` because they never block: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from feature_store.schemas import Identifier
from services.api.security import require_admin_key, require_read_key, require_write_key
from services.api.state import ServiceState
from services.recommend.online_store import ServingStore


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


async def get_store(request: Request) -> ServingStore:
    return request.app.state.service.store  # type: ignore[no-any-return]


async def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


StateDep = Annotated[ServiceState, Depends(get_state)]
StoreDep = Annotated[ServingStore, Depends(get_store)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
ReadAccess = Depends(require_read_key)
WriteAccess = Depends(require_write_key)
AdminAccess = Depends(require_admin_key)

UserIdPath = Annotated[Identifier, Path(description="User id", examples=["196"])]
ItemIdPath = Annotated[Identifier, Path(description="Item id", examples=["242"])]
