"""`/v1/admin/learner`: the online learner's kill switch and what this worker serves, behind the admin key.

Turning the learner off is stored in Redis (`models.online_revisions`, `P:learn:{ranker}:control`):
the worker that answers stops serving revisions at once, the others at their next poll
(`learner.poll_interval_s`), and `recsys learn online` stops publishing updates. No restart.
"""

from __future__ import annotations

import os

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.api.deps import AdminAccess, StateDep
from services.api.errors import ApiError
from services.api.state import ServiceState
from services.learner.serving import LearnerServing, serves_ranker

router = APIRouter(prefix="/v1/admin/learner", tags=["admin"], dependencies=[AdminAccess])


class LearnerStatus(BaseModel):
    enabled: bool = Field(description="Whether revisions are served and updated: the setting and the switch both on.")
    setting_enabled: bool = Field(description="`learner.enabled` (a restart changes it).")
    switch_enabled: bool = Field(description="The switch set through this API (shared by every worker).")
    reason: str
    changed_at: str
    base: str | None = Field(description="The ranker version this worker serves (the revisions' base).")
    revision: str | None = Field(description="The online revision this worker serves for that base.")
    share: float
    promoted: bool = Field(description="Whether that revision's w serves the users outside the learner's arms (the serving gate).")
    ranker_served: bool = Field(description="Whether this worker serves that base by its ranker (false: a ranker without "
                                "penultimate features, or the recall blend's own order won validation; the learner serves nobody).")
    worker: int = Field(description="The answering worker's process id.")


class SwitchRequest(BaseModel):
    enabled: bool
    reason: str = Field(min_length=1, max_length=500, description="Why (logged and stored with the switch).")


class LearnerUnavailableError(ApiError):
    status_code = 503
    code = "unavailable"


@router.get("", response_model=LearnerStatus)
def status(state: StateDep) -> LearnerStatus:
    """The kill switch and the revision this worker serves."""
    return _status(state)


@router.post("", response_model=LearnerStatus)
def switch(body: SwitchRequest, state: StateDep) -> LearnerStatus:
    """Turn online updates and the serving of revisions on or off for every worker, without a restart."""
    learner = _learner(state)
    learner.store.set_control(body.enabled, body.reason)
    learner.refresh()
    return _status(state)


def _learner(state: ServiceState) -> LearnerServing:
    if state.learner is None:
        raise LearnerUnavailableError("this service runs without the online learner")
    return state.learner


def _status(state: ServiceState) -> LearnerStatus:
    learner = _learner(state)
    live = learner.live
    return LearnerStatus(
        enabled=learner.enabled, setting_enabled=learner.settings.enabled, switch_enabled=live.control.enabled,
        reason=live.control.reason, changed_at=live.control.at, base=live.base,
        revision=live.revision.id if live.revision else None, share=learner.settings.share,
        promoted=learner.enabled and learner.promotes(live.revision),
        ranker_served=serves_ranker(state.models.bundle, live.base), worker=os.getpid(),
    )
