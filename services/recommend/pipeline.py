"""recall → filter → rank → explore → explain, one request at a time, with per-stage timings.

The pipeline holds the parts that do not change with model versions (online store, fallback);
the model-dependent parts (extra recall channels, ranker, versions) come in a `ModelBundle` per
call, so a request keeps the bundle it started with while the manager swaps in a new one.

Its Redis calls are synchronous: the API runs each request on a worker thread under a deadline
(`recommend_within_deadline`), so a Redis that hangs costs a request the deadline and the event
loop nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from models.retrieval.multichannel import MultiChannelRecall, RecallChannel
from services.explore.greedy import Greedy
from services.explore.policy import Ranked
from services.explore.stage import UNAVAILABLE, ExploreStage
from services.recommend.blend_recall import BLEND_ORDER, BLEND_SOURCE, BlendOrderRanker, BlendServing
from services.recommend.channels import for_request
from services.recommend.explain import explain, top_attended
from services.recommend.fallback import LastKnownPopular
from services.recommend.online_store import ServingStore
from services.recommend.rankers import RecallScoreRanker
from services.recommend.types import (
    Candidate,
    DegradedError,
    Merged,
    Ranker,
    Recommendation,
    RecommendationRequest,
    RecommendationResult,
    SimilarItems,
    UserContext,
)

log = logging.getLogger(__name__)

StageObserver = Callable[[str, float], None]


#: The bundle's `versions` key of a ranker version loaded for an experiment (not the current one).
EXTRA_RANKER = "ranker:"


@dataclass(frozen=True)
class ModelBundle:
    """Everything that comes from the model registry, swapped as one immutable unit."""

    channels: tuple[RecallChannel, ...] = ()
    ranker: Ranker | None = None
    similar: SimilarItems | None = None
    versions: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # "role/version" that failed to load -> why
    rankers: dict[str, Ranker] = field(default_factory=dict)  # version -> ranker, for experiments
    blend: BlendServing | None = None  # the recall artifact's learned blend, when it has one

    @property
    def has_models(self) -> bool:
        return self.ranker is not None or bool(self.channels)

    @property
    def served_versions(self) -> dict[str, str]:
        """The current version per role (without the experiments' extra rankers)."""
        return {role: version for role, version in self.versions.items() if not role.startswith(EXTRA_RANKER)}

    def ranker_for(self, version: str | None) -> Ranker | None:
        """The ranker of `version` (None: the current one); None when it is not loaded."""
        if version is None or version == self.versions.get("ranker"):
            return self.ranker
        return self.rankers.get(version)


@dataclass(frozen=True)
class ServingPlan:
    """How an experiment serves one request (built by `services.experiments.serving`).

    `versions`: the ranker version per arm (None: the current one). One version: an A/B arm,
    served with `explore` when it names one, or ranked by `rankers[0]` when given (the online
    learner's promoted weights), logged as ranker `ranker_version`. Several: interleaving, where
    `merge(rankings, k)` returns the shown ids, the team (index into `versions`) and the propensity
    of each slot (`Merged`); each slot is logged with every team's rank of its item.
    """

    versions: tuple[str | None, ...]
    explore: ExploreStage | None = None
    merge: Callable[[list[list[str]], int], Merged] | None = None
    label: str | None = None  # the explore label of an interleaved list
    teams: tuple[str, ...] = ()  # interleaving: each version's team name (its arm)
    rankers: tuple[Ranker, ...] = ()  # each team's ranker, given (the online learner's heads)
    ranker_version: str | None = None  # one version ranked by `rankers[0]`: the ranker its impressions name


Assign = Callable[[RecommendationRequest], tuple[RecommendationRequest, ServingPlan | None]]
"""The request with its assigned context (experiment, arm) and the plan that serves it (None: the default)."""


class RecommendationPipeline:
    """Runs the stages; any online-store failure becomes a degraded answer from the fallback."""

    def __init__(
        self,
        store: ServingStore,
        base_channels: Sequence[RecallChannel],
        fallback: LastKnownPopular,
        candidates: int = 200,
        history_length: int = 50,
        observe_stage: StageObserver | None = None,
        quotas: dict[str, int] | None = None,
        deadline_s: float = 1.0,
        explore: ExploreStage | None = None,
    ) -> None:
        self.store = store
        self.base_channels = tuple(base_channels)
        self.quotas = dict(quotas or {})
        self.fallback = fallback
        self.candidates = candidates
        self.history_length = history_length
        self.observe_stage = observe_stage or (lambda stage, seconds: None)
        self.default_ranker = RecallScoreRanker()
        self.deadline_s = deadline_s
        self.explore = explore or ExploreStage(Greedy())
        self._executor = ThreadPoolExecutor(thread_name_prefix="recommend")

    def recommend(
        self, request: RecommendationRequest, bundle: ModelBundle, plan: ServingPlan | None = None
    ) -> RecommendationResult:
        timings: dict[str, float] = {}
        try:
            if plan is not None and plan.merge is not None:
                return self._run_interleaved(request, bundle, plan, timings)
            return self._run(request, bundle, timings, plan)
        except DegradedError:
            return self._degraded(request, bundle, timings)

    async def recommend_within_deadline(
        self, request: RecommendationRequest, bundle: ModelBundle, assign: Assign | None = None
    ) -> tuple[RecommendationRequest, RecommendationResult]:
        """`assign(request)` (the request's experiment or learner plan, which may read Redis), then
        `recommend`, on one worker thread: the request as assigned and its result. Past `deadline_s`,
        the request as received and the fallback's degraded answer; the abandoned run finishes in
        the background (bounded by the Redis socket timeouts), one still queued is dropped. One
        thread hop for both: a second one for the assignment cost every request its wake-ups."""
        def work() -> tuple[RecommendationRequest, RecommendationResult]:
            assigned, plan = assign(request) if assign is not None else (request, None)
            return assigned, self.recommend(assigned, bundle, plan)

        future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        try:
            return await asyncio.wait_for(future, self.deadline_s)
        except TimeoutError:
            log.warning("recommendation for %s missed its %.3fs deadline: answering degraded",
                        request.user_id, self.deadline_s)
            return request, self._degraded(request, bundle, {})

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _degraded(
        self, request: RecommendationRequest, bundle: ModelBundle, timings: dict[str, float]
    ) -> RecommendationResult:
        items = self.fallback.answer(request)
        return RecommendationResult(items, bundle.served_versions, "last_known_popular", True, timings,
                                    explore=UNAVAILABLE)

    def _run(
        self, request: RecommendationRequest, bundle: ModelBundle, timings: dict[str, float],
        plan: ServingPlan | None = None,
    ) -> RecommendationResult:
        user, candidates = self._candidates(request, bundle, timings)
        version = plan.versions[0] if plan is not None else None
        given = plan.rankers[0] if plan is not None and plan.rankers else None
        # Blended candidates keep the blend's order unless validation chose the current ranker
        # over it (an experiment's named ranker version, or a given ranker, is served as the plan says).
        blend_order = (version is None and given is None and bundle.blend is not None and bool(candidates)
                       and BLEND_SOURCE in candidates[0].sources and not bundle.blend.serves_ranker(bundle.versions.get("ranker")))  # fmt: skip
        if blend_order and bundle.blend is not None:
            model: Ranker | None = BlendOrderRanker(bundle.blend)
        else:
            model = given if given is not None else bundle.ranker_for(version)
        ranked, attended, fallback = self._rank_stage(model, user, candidates, timings)
        explore = plan.explore if plan is not None and plan.explore is not None else self.explore
        with self._stage("explore", timings):
            scores = np.array([c.recall_score for c in ranked], dtype=float)
            ranked_ids = tuple(c.item_id for c in ranked)
            explored = explore.run(Ranked(ranked_ids, scores), request.k, user.history, request.user_id, request.request_id)
            shown = [ranked[i] for i in explored.slate.positions]
            attended = [attended[i] for i in explored.slate.positions] if attended else []
        with self._stage("explain", timings):
            if bundle.blend is not None:
                bundle.blend.explain(user.history[::-1], shown)
            reasons = explain(shown, attended, self.store)
        items = [
            Recommendation(c.item_id, c.recall_score, sorted(c.sources), reason, propensity)
            for c, reason, propensity in zip(shown, reasons, explored.propensities)
        ]
        versions = bundle.served_versions
        if version is not None:
            versions["ranker"] = version
        if plan is not None and plan.ranker_version is not None:
            versions["ranker"] = plan.ranker_version
        if blend_order:
            versions["ranker"] = BLEND_ORDER
        return RecommendationResult(items, versions, fallback, False, timings, len(candidates), explored.policy,
                                    (ranked_ids, tuple(scores.tolist())), explored.pending)

    def _run_interleaved(
        self, request: RecommendationRequest, bundle: ModelBundle, plan: ServingPlan, timings: dict[str, float]
    ) -> RecommendationResult:
        """Every arm's ranker ranks its own copy of the candidates; the plan's merge picks the
        shown list and each slot's team (no explore stage: the merge is the policy)."""
        assert plan.merge is not None
        user, candidates = self._candidates(request, bundle, timings)
        rankings: list[list[Candidate]] = []
        attention: dict[str, str | None] = {}
        with self._stage("rank", timings):  # one stage: every ranker's pass is the request's ranking
            for team, version in enumerate(plan.versions):
                copies = [Candidate(c.item_id, c.recall_score, set(c.sources), c.because) for c in candidates]
                model = plan.rankers[team] if plan.rankers else bundle.ranker_for(version)
                ranked, attended, _ = self._ranked(model, user, copies)
                rankings.append(ranked)
                for candidate, why in zip(ranked, attended or [None] * len(ranked)):
                    attention.setdefault(candidate.item_id, why)
        with self._stage("explore", timings):
            merged = plan.merge([[c.item_id for c in r] for r in rankings], request.k)
            by_id = [{c.item_id: c for c in ranking} for ranking in rankings]
            shown = [by_id[team][item_id] for item_id, team in zip(merged.items, merged.teams)]
            rank_of = [{c.item_id: rank for rank, c in enumerate(ranking)} for ranking in rankings]
        with self._stage("explain", timings):
            if bundle.blend is not None:
                bundle.blend.explain(user.history[::-1], shown)
            reasons = explain(shown, [attention.get(c.item_id) for c in shown], self.store)
        items = [
            Recommendation(c.item_id, c.recall_score, sorted(c.sources), reason, propensity, plan.teams[team],
                           {name: ranks[c.item_id] for name, ranks in zip(plan.teams, rank_of) if c.item_id in ranks},
                           dict(zip(plan.teams, merged.ranker_propensities[slot])) if merged.ranker_propensities else None)
            for slot, (c, reason, propensity, team) in enumerate(zip(shown, reasons, merged.propensities, merged.teams))
        ]
        versions = bundle.served_versions
        versions["ranker"] = "+".join(v or bundle.versions.get("ranker", "none") for v in plan.versions)
        return RecommendationResult(items, versions, None, False, timings, len(candidates), plan.label or "interleaved")

    def _candidates(
        self, request: RecommendationRequest, bundle: ModelBundle, timings: dict[str, float]
    ) -> tuple[UserContext, list[Candidate]]:
        with self._stage("features", timings):
            history, seen = self.store.user_behaviour(request.user_id, self.history_length)
            user = UserContext(request.user_id, history, seen)
        with self._stage("recall", timings):
            recalled = self._recall(user, request, bundle)
        with self._stage("filter", timings):
            candidates = self._filter(recalled, request)
        return user, candidates

    def _rank_stage(
        self, model: Ranker | None, user: UserContext, candidates: list[Candidate], timings: dict[str, float]
    ) -> tuple[list[Candidate], list[str | None], str | None]:
        """Ranked candidates, their attended history items, and the fallback used (if any), timed as
        the `rank` stage."""
        with self._stage("rank", timings):
            return self._ranked(model, user, candidates)

    def _ranked(
        self, model: Ranker | None, user: UserContext, candidates: list[Candidate]
    ) -> tuple[list[Candidate], list[str | None], str | None]:
        ranker = model or self.default_ranker
        try:
            ranked, attended = self._rank(ranker, user, candidates)
        except DegradedError:
            raise
        except Exception:  # a broken model must cost ranking quality, not the request
            log.exception("ranker %s failed; ranking by recall score", ranker.name)
            ranked, attended = self._rank(self.default_ranker, user, candidates)
            return ranked, attended, "ranker_error"
        return ranked, attended, None if model is not None else "popularity"

    def _recall(self, user: UserContext, request: RecommendationRequest, bundle: ModelBundle) -> list[Candidate]:
        """The recall artifact's blend over the user's history when it has one and knows some of
        it, followed by the serving channels' candidates (`_after_blend`); else the model channels
        and the serving channels, interleaved by rank within their quotas (`MultiChannelRecall`);
        a category-filtered request recalls from that category instead of the user's."""
        oldest_first = user.history[::-1]
        blocked = user.seen | request.exclude  # skipped in the merge, so `candidates` unseen items reach the ranker
        if bundle.blend is not None and not request.category:
            reserved = self.candidates // 4
            blended = bundle.blend.candidates(oldest_first, self.candidates - reserved, blocked)
            if blended is not None:
                return blended + self._after_blend(oldest_first, blended, reserved, blocked)
        base = for_request(self.base_channels, request.category, blocked)
        recall = MultiChannelRecall(bundle.channels + base, self.quotas)
        return [
            Candidate(c.item_id, c.score, c.channels, c.because)
            for c in recall.recall(oldest_first, self.candidates, exclude=blocked)
        ]

    def _after_blend(self, history: Sequence[str], blended: list[Candidate], k: int, blocked: Collection[str]) -> list[Candidate]:
        """Up to `k` candidates of the serving channels (category, popular, trending) that the
        blend did not recall: the blend knows only its training items, and without these a known
        user would never be offered a new or trending item, nor could the explore stage try one.
        They score below every blended item, in the channels' merged order, so the blend's own
        order serves them last."""
        taken = set(blocked) | {c.item_id for c in blended}
        lowest = min((c.recall_score for c in blended), default=0.0)
        channels = for_request(self.base_channels, None, taken)
        found = MultiChannelRecall(channels, self.quotas).recall(history, k, exclude=taken) if k else []
        return [Candidate(c.item_id, lowest - 1.0 - rank, c.channels, c.because) for rank, c in enumerate(found)]

    def _filter(self, candidates: list[Candidate], request: RecommendationRequest) -> list[Candidate]:
        """Seen and excluded items never got past recall; here: availability and the category."""
        unavailable = self.store.unavailable([c.item_id for c in candidates])
        kept = [c for c in candidates if c.item_id not in unavailable]
        if request.category:
            categories = self.store.categories_of([c.item_id for c in kept])
            kept = [c for c in kept if request.category in categories.get(c.item_id, ())]
        return kept

    def _rank(
        self, ranker: Ranker, user: UserContext, candidates: list[Candidate]
    ) -> tuple[list[Candidate], list[str | None]]:
        """Every candidate, best first (the explore stage picks the shown k from them)."""
        if not candidates:
            return [], []
        output = ranker.rank(user, candidates)
        order = np.argsort(-output.scores, kind="stable")
        attended = top_attended(output.attention, user.history)
        ranked = []
        for index in order:
            candidate = candidates[int(index)]
            candidate.recall_score = float(output.scores[int(index)])  # the final score from here on
            ranked.append(candidate)
        return ranked, [attended[int(i)] for i in order] if attended else []

    @contextmanager
    def _stage(self, name: str, timings: dict[str, float]) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            timings[name] = elapsed * 1000.0
            self.observe_stage(name, elapsed)

