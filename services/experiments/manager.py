"""Create, list, get and stop experiments: the checks a definition must pass before it runs.

Creating one resolves each arm's ranker reference in the model registry (an unknown one is a
422), takes the first free slice of its layer that holds its traffic unless an offset is given
(no room, or an overlap with a running experiment of the layer, is a 409), and stores it. An
arm's explore settings are its policy's; the candidate logging (`explore.log_candidates_*`) is
the whole service's, and an arm that sets it is a 422 rather than silently ignored.
"""

from __future__ import annotations

from datetime import datetime, timezone

from models.registry import ModelRegistry, RegistryError
from services.experiments.errors import ExperimentConflictError, InvalidExperimentError
from services.experiments.model import LEARNER, SHARE_TOLERANCE, Experiment, ExperimentSpec, Status
from services.experiments.store import ExperimentStore

RANKER = "ranker"
#: Explore settings of the whole service (the impression logger's, for every list), never of one arm.
SERVICE_WIDE_EXPLORE = ("log_candidates_share", "log_candidates_top_n")


class ExperimentManager:
    """The operations behind `/v1/experiments` and `recsys experiments`."""

    def __init__(self, store: ExperimentStore, registry: ModelRegistry) -> None:
        self.store = store
        self.registry = registry

    def create(self, spec: ExperimentSpec, now: datetime | None = None) -> Experiment:
        now = now or datetime.now(timezone.utc)
        for arm in spec.arms:
            service_wide = [name for name in SERVICE_WIDE_EXPLORE if name in (arm.explore or {})]
            if service_wide:
                raise InvalidExperimentError(f"arm {arm.name!r}: {', '.join(service_wide)} is a setting of the whole "
                                             f"service (explore.{service_wide[0]}), not of an arm")
        arms = [arm.model_copy(update={"version": self._resolve(arm.ranker)}) for arm in spec.arms]
        with self.store.locked():
            stored = self.store.from_files()
            if spec.id in stored or self.store.exists(spec.id):  # an unreadable file still holds its id
                raise ExperimentConflictError(f"experiment {spec.id!r} exists (ids are never reused)")
            running = [e for e in stored.values()  # the learner's experiment holds no slice (`model.LEARNER`)
                       if e.status == Status.RUNNING and e.layer == spec.layer and LEARNER not in (e.id, spec.id)]
            offset = spec.offset if spec.offset is not None else _first_gap(running, spec.traffic, spec.layer)
            experiment = Experiment.model_validate({
                **spec.model_dump(), "arms": [a.model_dump() for a in arms], "offset": offset,
                "salt": spec.salt or spec.id, "created_at": now,
            })
            for other in running:
                if experiment.overlaps(other):
                    raise ExperimentConflictError(
                        f"experiment {spec.id!r} overlaps running experiment {other.id!r} in layer {spec.layer!r} "
                        f"(its traffic [{other.offset:g}, {other.offset + other.traffic:g})): put it in another "
                        "layer, give it a free offset, or stop the other first"
                    )
            self.store.save(experiment)
        return experiment

    def list(self) -> list[Experiment]:
        return sorted(self.store.all().values(), key=lambda e: e.created_at)

    def get(self, experiment_id: str) -> Experiment:
        return self.store.get(experiment_id)

    def stop(self, experiment_id: str, now: datetime | None = None) -> Experiment:
        """Stop an experiment: its users get the default serving from their next request."""
        with self.store.locked():
            experiment = self._stored(experiment_id)
            if experiment.status == Status.STOPPED:
                self.store.sync()  # a repeated stop also repairs a mirror that missed the first
                return experiment
            stopped = experiment.model_copy(update={"status": Status.STOPPED,
                                                    "stopped_at": now or datetime.now(timezone.utc)})
            self.store.save(stopped)
        return stopped

    def stop_arm(self, experiment_id: str, arm: str, why: str) -> Experiment:
        """Stop one arm (the guardrail): its users get the default serving."""
        with self.store.locked():
            experiment = self._stored(experiment_id)
            if arm in experiment.stopped_arms:
                return experiment
            updated = experiment.model_copy(update={"stopped_arms": {**experiment.stopped_arms, arm: why}})
            self.store.save(updated)
        return updated

    def _stored(self, experiment_id: str) -> Experiment:
        stored = self.store.from_files()
        if experiment_id not in stored:
            return self.store.get(experiment_id)  # raises the 404
        return stored[experiment_id]

    def _resolve(self, reference: str | None) -> str | None:
        if reference is None:
            return None
        try:
            return self.registry.resolve(RANKER, reference).version
        except RegistryError as exc:
            raise InvalidExperimentError(f"unknown ranker version {reference!r}: {exc}") from None


def _first_gap(running: list[Experiment], traffic: float, layer: str) -> float:
    """The lowest offset where `traffic` fits between the running experiments' slices."""
    start = 0.0
    for other in sorted(running, key=lambda e: e.offset):
        if other.offset - start >= traffic - SHARE_TOLERANCE:
            return start
        start = max(start, other.offset + other.traffic)
    if 1.0 - start >= traffic - SHARE_TOLERANCE:
        return start
    used = sum(e.traffic for e in running)
    raise ExperimentConflictError(
        f"layer {layer!r} has no free slice of {traffic:g} (running experiments use {used:g} of it): "
        "use another layer or stop an experiment"
    )
