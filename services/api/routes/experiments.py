"""`/v1/experiments`: create, list, get and stop experiments (admin key), their report, and the
report page `/experiments/{id}` (docs/experiments.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from services.api.deps import AdminAccess, ReadAccess, StateDep
from services.api.errors import ApiError, ServiceUnavailableError
from services.api.state import ServiceState
from services.experiments.errors import ExperimentError
from services.experiments.manager import ExperimentManager
from services.experiments.model import Experiment, ExperimentSpec
from services.experiments.page import render
from services.experiments.report import ExperimentReport, build_report

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

ExperimentIdPath = Annotated[str, PathParam(min_length=1, max_length=64, description="Experiment id")]


@contextmanager
def _as_api_errors() -> Iterator[None]:
    """Experiment errors answer with their own status (404, 409, 422) and message."""
    try:
        yield
    except ExperimentError as exc:
        error = ApiError(str(exc))
        error.status_code = exc.status_code
        error.code = {404: "not_found", 409: "conflict", 422: "validation_error", 503: "unavailable"}.get(
            exc.status_code, "bad_request")
        raise error from None


def _manager(state: ServiceState) -> ExperimentManager:
    if state.experiments is None:
        raise ServiceUnavailableError("experiments are not available in this service")
    return state.experiments


@router.post("", status_code=201, response_model=Experiment, dependencies=[AdminAccess])
def create_experiment(spec: ExperimentSpec, state: StateDep) -> Experiment:
    """Create and start an experiment; its ranker versions load in every worker at the next
    registry poll (in this one, now)."""
    with _as_api_errors():
        experiment = _manager(state).create(spec)
    state.models.check_now()
    return experiment


@router.get("", response_model=list[Experiment], dependencies=[AdminAccess])
def list_experiments(state: StateDep) -> list[Experiment]:
    """Every experiment, oldest first."""
    with _as_api_errors():
        return _manager(state).list()


@router.get("/{experiment_id}", response_model=Experiment, dependencies=[AdminAccess])
def get_experiment(experiment_id: ExperimentIdPath, state: StateDep) -> Experiment:
    with _as_api_errors():
        return _manager(state).get(experiment_id)


@router.post("/{experiment_id}/stop", response_model=Experiment, dependencies=[AdminAccess])
def stop_experiment(experiment_id: ExperimentIdPath, state: StateDep) -> Experiment:
    """Stop it: its users get the default serving from their next request, in every worker."""
    with _as_api_errors():
        return _manager(state).stop(experiment_id)


@router.get("/{experiment_id}/report", response_model=ExperimentReport, dependencies=[ReadAccess])
def experiment_report(experiment_id: ExperimentIdPath, state: StateDep) -> ExperimentReport:
    """Per-arm CTR with intervals, lift, SRM check (A/B) or per-user preference (interleaving);
    applies the guardrail (an arm past it is stopped)."""
    return _report(state, experiment_id)


page = APIRouter(tags=["experiments"], dependencies=[ReadAccess])


@page.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(experiment_id: ExperimentIdPath, state: StateDep) -> HTMLResponse:
    """The report as a page with SVG plots (no JavaScript)."""
    return HTMLResponse(render(_report(state, experiment_id)))


def _report(state: ServiceState, experiment_id: str) -> ExperimentReport:
    attribution = state.store.features.attribution()
    try:
        with _as_api_errors():
            return build_report(_manager(state), attribution, state.settings.batch_dir, experiment_id)
    finally:
        attribution.close()
