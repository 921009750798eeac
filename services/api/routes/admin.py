"""`/v1/admin`: operator actions, always behind an API key."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import AdminAccess, RequestIdDep, StateDep
from services.api.schemas import ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminAccess])


@router.post("/models/reload", response_model=ReloadResponse)
def reload_models(state: StateDep, request_id: RequestIdDep) -> ReloadResponse:
    """Check the registry now and swap in its current versions if they changed; a version that
    does not load leaves its role's last good one serving, and `error` says why."""
    swapped = state.models.check_now()
    return ReloadResponse(
        swapped=swapped, model_versions=state.models.bundle.versions, error=state.models.error,
        request_id=request_id,
    )
