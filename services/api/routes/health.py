"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: Redis unreachable or models not loaded"}})
def readyz(state: StateDep) -> JSONResponse:
    """Ready when Redis answers (on a cluster, every master) and the model manager has loaded the
    registry's versions (or none)."""
    redis_ok = state.store.ping()
    models_ok = state.models.loaded_once
    body: dict[str, Any] = {
        "status": "ready" if redis_ok and models_ok else "not_ready",
        "redis": "ok" if redis_ok else "unreachable",
        "models": "loaded" if models_ok else "loading",
        "model_versions": state.models.bundle.versions,
        # Informational, not gating: a large catalog syncs in the background while serving.
        "catalog": state.catalog_sync.state if state.catalog_sync else "off",
        "catalog_invalid_rows": state.catalog_sync.invalid_count if state.catalog_sync else 0,
        "fallback": None if state.models.bundle.ranker is not None else "popularity",
        "model_errors": {**state.models.bundle.errors, **({"load": state.models.last_error} if state.models.last_error else {})},
    }
    return JSONResponse(body, status_code=200 if redis_ok and models_ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    """Prometheus exposition of the service's metrics (every worker's, with several)."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
