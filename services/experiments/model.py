"""Experiment definitions as data: what a client sends (`ExperimentSpec`) and what is stored.

An experiment owns the slice `[offset, offset + traffic)` of its layer's hash space (every user
hashes to one point per layer, `assignment`); experiments of one layer must not overlap, those of
different layers are independent. Inside the slice, a second salted hash splits users over the
arms by their shares. Arms name a ranker by a registry reference (a version id, `current`, or a
pinned name such as `candidate`), resolved to a version when the experiment is created, and an
optional explore policy with its parameters (`feature_store.settings.ExploreSettings`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from feature_store.settings import MAX_TAU, ExploreSettings

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
SHARE_TOLERANCE = 1e-9
#: Every number is finite: JSON has no infinity, so a stored `inf` would read back as null.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
#: The experiment that reports the online learner (`services.learner.serving`): the learner assigns
#: and serves its arms (`online`: the learning share; `control`: a same-sized slice served plainly),
#: so `ExperimentServing` leaves it alone and it takes no slice of its layer; it is defined here for
#: its A/B report and guardrail.
LEARNER = "learner"
LEARNER_ARMS = ("control", "online")


class Kind(StrEnum):
    AB = "ab"
    INTERLEAVING = "interleaving"


class Method(StrEnum):
    """Interleaving merges served (`services.experiments.interleaving`)."""

    TEAM_DRAFT = "team_draft"
    BALANCED = "balanced"
    PROBABILISTIC = "probabilistic"


class Status(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Arm(BaseModel):
    """One arm: a ranker (None: whatever the service serves as current) and an explore policy."""

    model_config = STRICT

    name: Name
    ranker: Name | None = Field(default=None, description="Registry reference: version id, 'current' or a pin name")
    version: str | None = Field(default=None, description="The ranker version `ranker` resolved to at creation")
    explore: dict[str, Any] | None = Field(
        default=None, description="Explore policy and parameters, as the `explore` settings: {'policy': 'ucb1', ...}",
    )
    share: float | None = Field(default=None, gt=0, le=1, description="A/B: share of the experiment's users")

    @field_validator("explore")
    @classmethod
    def _known_policy(cls, explore: dict[str, Any] | None) -> dict[str, Any] | None:
        if explore is not None:
            ExploreSettings.model_validate(explore)  # unknown policy or parameter: a clear error
        return explore

    def explore_settings(self) -> ExploreSettings | None:
        return None if self.explore is None else ExploreSettings.model_validate(self.explore)


class Guardrail(BaseModel):
    """Flag (and stop) an arm whose CTR is below the first arm's by more than `max_ctr_drop`
    (relative), with a one-sided p-value under `p_value`."""

    model_config = STRICT

    max_ctr_drop: float = Field(gt=0, lt=1)
    p_value: float = Field(default=0.01, gt=0, lt=1)


class ExperimentSpec(BaseModel):
    """What a client sends to create an experiment."""

    model_config = STRICT

    id: Name
    kind: Kind
    arms: list[Arm] = Field(min_length=2, max_length=6)  # an interleaved policy label names every version
    traffic: float = Field(default=1.0, gt=0, le=1, description="Share of the layer's users in the experiment")
    offset: float | None = Field(default=None, ge=0, lt=1, description="Start of its slice (default: the first free)")
    layer: Name = "default"
    salt: Name | None = Field(default=None, description="Arm-split salt (default: the id)")
    start: datetime | None = None
    end: datetime | None = None
    guardrail: Guardrail | None = None
    method: Method = Field(default=Method.TEAM_DRAFT, description="Interleaving: the merge")
    tau: float = Field(default=3.0, gt=0, le=MAX_TAU, description="Probabilistic interleaving: the softmax's exponent")

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique (got {names})")
        if self.offset is not None and self.offset + self.traffic > 1 + SHARE_TOLERANCE:
            raise ValueError(f"offset + traffic = {self.offset + self.traffic:g} is over 1")
        shares = [arm.share for arm in self.arms]
        if any(s is not None for s in shares):
            if any(s is None for s in shares):
                raise ValueError("give every arm a share, or none (equal shares)")
            if abs(sum(shares) - 1) > SHARE_TOLERANCE:  # type: ignore[arg-type]
                raise ValueError(f"arm shares must sum to 1 (got {sum(shares):g})")  # type: ignore[arg-type]
        if self.start and self.end and _utc(self.end) <= _utc(self.start):
            raise ValueError("end must be after start")
        if self.kind == Kind.INTERLEAVING:
            self._check_interleaving()
        if self.id == LEARNER:
            self._check_learner()
        return self

    def _check_learner(self) -> None:
        plain = all(arm.ranker is None and arm.explore is None and arm.share is None for arm in self.arms)
        if self.kind != Kind.AB or tuple(arm.name for arm in self.arms) != LEARNER_ARMS or not plain:
            raise ValueError(f"experiment {LEARNER!r} reports the online learner's traffic: kind 'ab' with arms "
                             f"{' and '.join(map(repr, LEARNER_ARMS))}, in that order, without ranker, explore or "
                             "share (the learner serves them: docs/online_learning.md)")

    def _check_interleaving(self) -> None:
        if any(arm.explore is not None for arm in self.arms):
            raise ValueError("interleaving arms take no explore policy: the merge decides the shown list")
        if any(arm.share is not None for arm in self.arms):
            raise ValueError("interleaving arms take no share: every user sees every arm's ranker")
        if self.guardrail is not None:
            raise ValueError("a guardrail applies to A/B arms (an interleaved list mixes the arms)")
        if self.method == Method.BALANCED and len(self.arms) != 2:
            raise ValueError(f"balanced interleaving compares two arms (got {len(self.arms)})")


class Experiment(ExperimentSpec):
    """A stored experiment: the spec with its slice, salt and versions resolved, and its status."""

    offset: float = Field(ge=0, lt=1)
    salt: Name
    status: Status = Status.RUNNING
    created_at: datetime
    stopped_at: datetime | None = None
    stopped_arms: dict[str, str] = Field(default_factory=dict, description="Arm -> why it stopped (guardrail)")

    def active(self, now: datetime) -> bool:
        """Running and inside its [start, end) window."""
        if self.status != Status.RUNNING:
            return False
        return (self.start is None or _utc(self.start) <= now) and (self.end is None or now < _utc(self.end))

    def shares(self) -> list[float]:
        """Each arm's share of the experiment's users (equal unless given)."""
        if self.arms[0].share is None:
            return [1.0 / len(self.arms)] * len(self.arms)
        return [float(arm.share) for arm in self.arms]  # type: ignore[arg-type]

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def overlaps(self, other: "Experiment") -> bool:
        """Same layer, intersecting slices and intersecting time windows."""
        if other.layer != self.layer:
            return False
        if self.offset >= other.offset + other.traffic - SHARE_TOLERANCE:
            return False
        if other.offset >= self.offset + self.traffic - SHARE_TOLERANCE:
            return False
        early = datetime.min.replace(tzinfo=timezone.utc)
        late = datetime.max.replace(tzinfo=timezone.utc)
        return _utc(self.start or early) < _utc(other.end or late) and _utc(other.start or early) < _utc(self.end or late)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
