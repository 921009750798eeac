"""`/v1/admin/models`: the registry's versions, promotion and rollback, behind the admin API key.

A promotion or rollback moves the registry's CURRENT pointer (shared by every worker); the worker
that answers swaps at once, the others at their next poll (`api.model_poll_interval_s`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from models.registry import ModelRegistry, RegistryError
from services.api.deps import AdminAccess, RequestIdDep, StateDep
from services.api.errors import ApiError, NotFoundError
from services.api.state import ServiceState

router = APIRouter(prefix="/v1/admin/models", tags=["admin"], dependencies=[AdminAccess])


class ModelRow(BaseModel):
    role: str
    version: str
    created_at: str | None
    blessed: bool
    revoked: bool
    current: bool
    problem: str | None = None  # why its manifest does not read


class ModelList(BaseModel):
    versions: list[ModelRow]
    serving: dict[str, str] = Field(description="Versions this worker serves now.")


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1, max_length=128)


class RollbackRequest(BaseModel):
    role: Literal["recall", "ranker"]


class ChangeResponse(BaseModel):
    role: str
    current: str
    serving: dict[str, str]
    error: str | None
    request_id: str


class RegistryConflictError(ApiError):
    """The registry refused the change (e.g. the version is not blessed, nothing to roll back to)."""

    status_code = 409
    code = "conflict"


def _registry(state: ServiceState) -> ModelRegistry:
    return ModelRegistry(state.settings.model_registry_dir)


@router.get("", response_model=ModelList)
def list_models(state: StateDep) -> ModelList:
    """Every published version per role: blessed by the quality gate, revoked by a rollback, current."""
    registry = _registry(state)
    rows = [ModelRow(**row) for role in ("recall", "ranker") for row in registry.overview(role)]
    return ModelList(versions=rows, serving=state.models.bundle.versions)


@router.post("/promote", response_model=ChangeResponse)
def promote(body: PromoteRequest, state: StateDep, request_id: RequestIdDep) -> ChangeResponse:
    """Make a blessed version current (409 when the gate did not bless it)."""
    registry = _registry(state)
    try:
        role = registry.role_of(body.version)
    except RegistryError as exc:
        raise NotFoundError(str(exc)) from None
    try:
        registry.promote(role, body.version)
    except RegistryError as exc:
        raise RegistryConflictError(str(exc)) from None
    return _changed(state, role, body.version, request_id)


@router.post("/rollback", response_model=ChangeResponse)
def rollback(body: RollbackRequest, state: StateDep, request_id: RequestIdDep) -> ChangeResponse:
    """Serve the role's previously current version again; the rolled-back one loses its blessing."""
    try:
        version = _registry(state).rollback(body.role)
    except RegistryError as exc:
        raise RegistryConflictError(str(exc)) from None
    return _changed(state, body.role, version, request_id)


def _changed(state: ServiceState, role: str, version: str, request_id: str) -> ChangeResponse:
    state.models.check_now()
    return ChangeResponse(role=role, current=version, serving=state.models.bundle.versions,
                          error=state.models.error, request_id=request_id)  # fmt: skip
