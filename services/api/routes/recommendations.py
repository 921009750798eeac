"""`/v1/users/{user_id}/recommendations`: recall → filter → rank → explain.

The experiment assignment and the pipeline run on one worker thread under
`api.recommend_deadline_s`: their Redis calls are synchronous, and on the event loop one that hangs
(a paused or overloaded Redis, up to the socket timeout) stalled every request of the worker. A
request past its deadline answers degraded from the fallback list, with no experiment. CPU concurrency still comes from uvicorn workers (`settings.api.workers`).

Each answered list goes to the impression logger (`services.recommend.impressions`): a put on a
bounded queue, never a wait; its writer thread logs one impression event per shown item."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Query, Body

from services.api.deps import ReadAccess, RequestIdDep, StateDep, UserIdPath
from services.api.schemas import RecommendationsQuery, RecommendationsResponse, RecommendedItem
from services.api.state import ServiceState
from services.recommend.impressions import ServedList
from services.recommend.pipeline import Assign, ModelBundle, ServingPlan
from services.recommend.types import RecommendationRequest

router = APIRouter(prefix="/v1/users", tags=["recommendations"], dependencies=[ReadAccess])

K = Annotated[int, Query(ge=1, le=100, description="How many items to return")]
Exclude = Annotated[
    list[Annotated[str, Query(min_length=1, max_length=128)]],
    Query(max_length=500, description="Item ids never to return (repeat the parameter)"),
]
Category = Annotated[str | None, Query(min_length=1, max_length=128, description="Only items in this category")]
LogImpressions = Annotated[
    bool, Query(description="false: the client logs its own impressions; the service logs none for this list"),
]


@router.get("/{user_id:path}/recommendations", response_model=RecommendationsResponse)
async def get_recommendations(
    user_id: UserIdPath, state: StateDep, request_id: RequestIdDep, k: K = 10, exclude: Exclude = [],
    category: Category = None, log_impressions: LogImpressions = True,
) -> RecommendationsResponse:
    """Top-k items for a user; items the user already interacted with never come back. Each
    shown item is logged as an impression unless `log_impressions=false`."""
    request = RecommendationRequest(user_id, k, frozenset(exclude), category, request_id=request_id)
    return await _recommend(state, request, log_impressions)


@router.post("/{user_id:path}/recommendations", response_model=RecommendationsResponse)
async def post_recommendations(
    user_id: UserIdPath, state: StateDep, request_id: RequestIdDep,
    query: Annotated[RecommendationsQuery, Body()] = RecommendationsQuery(),
) -> RecommendationsResponse:
    """The same as GET, with the request context (page, experiment, arm: copied into the
    impressions) in the body."""
    request = RecommendationRequest(
        user_id, query.k, frozenset(query.exclude), query.category, query.context.model_dump(exclude_none=True), request_id
    )
    return await _recommend(state, request, query.log_impressions)


async def _recommend(
    state: ServiceState, request: RecommendationRequest, log_impressions: bool
) -> RecommendationsResponse:
    bundle = state.models.bundle
    request, result = await state.pipeline.recommend_within_deadline(request, bundle, _assignment(state, bundle))
    if log_impressions and state.settings.api.log_impressions:
        explore = state.settings.explore
        state.impressions.submit(ServedList.of(request, result, request.request_id, datetime.now(timezone.utc),
                                               explore.log_candidates_share, explore.log_candidates_top_n))
    else:
        result.resolve_propensities()  # the client logs this list itself: it needs every slot's propensity
    metrics = state.metrics
    metrics.recalled.inc(result.candidates)
    metrics.ranked.inc(len(result.items))
    metrics.degraded.set(1 if result.degraded else 0)
    if result.degraded:
        metrics.degraded_responses.inc()
    elif result.fallback:
        metrics.fallback_responses.inc()
    return RecommendationsResponse(
        request_id=request.request_id,
        user_id=request.user_id,
        items=[
            RecommendedItem(item_id=i.item_id, position=position, score=i.score, sources=i.sources, reason=i.reason,
                            propensity=i.propensity, team=i.team)
            for position, i in enumerate(result.items)
        ],
        model_versions=result.model_versions,
        fallback=result.fallback,
        degraded=result.degraded,
        explore=result.explore,
        experiment=request.context.get("experiment"),
        arm=request.context.get("arm"),
        timings_ms={name: round(ms, 3) for name, ms in result.timings_ms.items()},
    )


def _assignment(state: ServiceState, bundle: ModelBundle) -> Assign:
    """The user's experiment plan (one Redis GET, run with the pipeline on its worker thread under
    the request's deadline: a hanging Redis costs the request, not the event loop), else the
    online learner's; the service's assignment replaces the client's experiment and arm. A client's
    own labels pass through, except one naming an experiment of the service that did not assign the
    user (or has stopped): it would be counted in that experiment's report."""
    def assign(request: RecommendationRequest) -> tuple[RecommendationRequest, ServingPlan | None]:
        served = None
        if state.experiment_serving is not None:
            served = state.experiment_serving.plan(request.user_id, bundle, datetime.now(timezone.utc), request.request_id)
        if served is None and state.learner is not None:  # experiments first: the learner takes the rest
            served = state.learner.plan(request.user_id, bundle, request.request_id)
        if served is None:
            serving = state.experiment_serving
            if serving is not None and serving.owns(request.context.get("experiment"), request.context.get("arm")):
                request = replace(request, context={k: v for k, v in request.context.items() if k not in ("experiment", "arm")})
            return request, None
        return replace(request, context={**request.context, **served.context}), served.plan

    return assign
