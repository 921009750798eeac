"""The serving side: which experiment a request is in, and how that changes what it is served.

A request is served by at most one experiment: the first of the user's assignments (by layer
name) whose rankers are loaded. Its impressions carry `experiment` and `arm` (`context_of`) and,
interleaved, each slot's `team`, every team's rank of the slot's item (`ranks`, what balanced
interleaving's credit needs) and, for probabilistic interleaving, every team's probability of
that placement (`ranker_propensities`, what the marginalised credit needs). Layers exist so experiments on other traffic can run at once;
a user in two layers' experiments is served (and counted) by the first, so give experiments that
must not share users the same layer.
An arm whose ranker version the worker has not loaded yet (an experiment created a moment ago,
before the next registry poll) serves nobody: its users get the default serving, unlabelled,
until it is loaded, so no impression is labelled with a ranker that did not serve it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from feature_store.settings import ExploreSettings
from services.experiments.assignment import Assignment, assign
from services.experiments.interleaving import balanced, probabilistic, team_draft
from services.experiments.model import LEARNER, Experiment, Method
from services.experiments.store import ExperimentStore
from services.explore.randomness import RequestGenerators, fresh_generator
from services.explore.stage import ExploreStage
from services.recommend.pipeline import ModelBundle, ServingPlan
from services.recommend.types import Merged

ExploreFactory = Callable[[ExploreSettings], ExploreStage]


@dataclass(frozen=True)
class Served:
    """The plan of one request and the context its impressions carry (none without an experiment:
    the online learner's promoted weights serve outside any)."""

    plan: ServingPlan
    experiment: str | None = None
    arm: str | None = None

    @property
    def context(self) -> dict[str, str]:
        """The impressions' `experiment` and `arm`: the arm qualified by the experiment id
        (`qualified_arm`), so the attribution store's counts per (policy, arm) keep experiments
        whose arms share a name apart."""
        if self.experiment is None or self.arm is None:
            return {}
        return {"experiment": self.experiment, "arm": qualified_arm(self.experiment, self.arm)}


def qualified_arm(experiment: str, arm: str) -> str:
    return f"{experiment}:{arm}"


class ExperimentServing:
    """Turns a user's assignment into a `ServingPlan`; arms' explore stages are built once."""

    def __init__(self, store: ExperimentStore, explore_factory: ExploreFactory,
                 rng: RequestGenerators = fresh_generator) -> None:
        self.store = store
        self.explore_factory = explore_factory
        self.rng = rng
        self._stages: dict[tuple[str, str], ExploreStage] = {}
        self._lock = threading.Lock()

    def ranker_versions(self) -> set[str]:
        """Every ranker version a running experiment needs (the model manager loads them)."""
        return {arm.version for e in self.store.all().values() if e.status == "running"
                for arm in e.arms if arm.version is not None}

    def owns(self, experiment: str | None, arm: str | None) -> bool:
        """Whether a label names one of this service's experiments (stored, running or not, or the
        learner's): only the service's own assignment may carry such a label."""
        names = {experiment, None if arm is None else arm.split(":", 1)[0]} - {None}
        return bool(names) and (LEARNER in names or not names.isdisjoint(self.store.all()))

    def plan(self, user_id: str, bundle: ModelBundle, now: datetime, request_id: str = "") -> Served | None:
        """The plan of the user's first servable assignment (an interleaving drawn from the request
        id: `services.explore.randomness`); the `learner` experiment is the online learner's to
        serve (`model.LEARNER`)."""
        experiments = [e for e in self.store.all().values() if e.id != LEARNER]
        self._release_stopped({e.id for e in experiments if e.status == "running"})
        for assignment in assign(experiments, user_id, now):
            served = self._served(assignment, bundle, user_id, request_id)
            if served is not None:
                return served
        return None

    def close(self) -> None:
        with self._lock:
            for stage in self._stages.values():
                stage.close()
            self._stages.clear()

    def _release_stopped(self, running: set[str]) -> None:
        """Close the explore stages of experiments no longer running (each holds item caches and a
        refresh thread), off the request's path."""
        with self._lock:  # `_stage` adds to the dict from other requests' threads
            stopped = [key for key in self._stages if key[0] not in running]
            released = [self._stages.pop(key) for key in stopped]
        for stage in released:
            threading.Thread(target=stage.close, name="explore-stage-close", daemon=True).start()

    def _served(self, assignment: Assignment, bundle: ModelBundle, user_id: str, request_id: str) -> Served | None:
        experiment = assignment.experiment
        if assignment.interleaved:
            versions = tuple(arm.version for arm in experiment.arms)
            if any(bundle.ranker_for(v) is None and v is not None for v in versions):
                return None
            plan = ServingPlan(versions, merge=self._merge(experiment, user_id, request_id), label=f"interleaving:{experiment.method}",
                               teams=tuple(arm.name for arm in experiment.arms))
            return Served(plan, experiment.id, assignment.arm)
        arm = experiment.arm(assignment.arm)
        if arm.version is not None and bundle.ranker_for(arm.version) is None:
            return None
        plan = ServingPlan((arm.version,), explore=self._stage(experiment.id, arm.name, arm.explore_settings()))
        return Served(plan, experiment.id, arm.name)

    def _stage(self, experiment: str, arm: str, settings: ExploreSettings | None) -> ExploreStage | None:
        if settings is None:
            return None
        with self._lock:
            if (experiment, arm) not in self._stages:
                self._stages[(experiment, arm)] = self.explore_factory(settings)
            return self._stages[(experiment, arm)]

    def _merge(self, experiment: Experiment, user_id: str, request_id: str) -> Callable[[list[list[str]], int], Merged]:
        def merge(rankings: list[list[str]], k: int) -> Merged:
            rng = self.rng(user_id, request_id)
            if experiment.method == Method.PROBABILISTIC:
                return probabilistic(rankings, k, rng, experiment.tau)
            if experiment.method == Method.BALANCED:
                return balanced(rankings[0], rankings[1], k, rng)
            return team_draft(rankings, k, rng)

        return merge
