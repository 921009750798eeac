"""`/v1/users/{user_id}`: user profile upserts."""

from __future__ import annotations

from fastapi import APIRouter

from feature_store.catalog import Catalog, CatalogEntryError
from feature_store.schemas import User
from services.api.deps import ReadAccess, RequestIdDep, StateDep, StoreDep, UserIdPath, WriteAccess
from services.api.errors import NotFoundError, ServiceUnavailableError, UnprocessableError
from services.api.schemas import UpsertResponse, UserUpsert

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.put("/{user_id:path}", response_model=UpsertResponse, dependencies=[WriteAccess])
def put_user(
    user_id: UserIdPath, body: UserUpsert, state: StateDep, store: StoreDep, request_id: RequestIdDep
) -> UpsertResponse:
    """Create or replace a user's profile attributes."""
    user = User(user_id=user_id, attributes=body.attributes)
    try:
        Catalog.from_settings(state.settings).upsert_users([user])  # durable first, as items are
    except CatalogEntryError as exc:
        raise UnprocessableError(str(exc)) from exc
    except OSError as exc:
        raise ServiceUnavailableError("catalog file write failed; retry later") from exc
    created = store.upsert_user(user)
    return UpsertResponse(id=user_id, created=created, request_id=request_id)


@router.get("/{user_id:path}", response_model=User, dependencies=[ReadAccess])
def get_user(user_id: UserIdPath, store: StoreDep) -> User:
    """A user's profile."""
    user = store.get_user(user_id)
    if user is None:
        raise NotFoundError(f"user {user_id!r} is not in the catalog")
    return user
