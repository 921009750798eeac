"""Sticky assignment: a salted hash of the user id, the same in every worker and after restarts.

`unit_hash(salt, user)` maps a user to [0, 1) with the first 8 bytes of SHA-256 of
`"<salt>:<user>"` (no process seed, unlike Python's `hash`). A user's point in a layer is
`unit_hash("layer:<layer>", user)`: the experiment whose slice `[offset, offset + traffic)` holds
it takes the user. Inside the experiment, `unit_hash("arm:<salt>", user)` picks the arm by the
cumulative shares. The two hashes use different salts, so which arm a user gets is independent of
where in the slice they fall, and layers (different salts) are independent of each other.

A stopped arm (guardrail) keeps its slice of the hash: its users get the service's default
serving (no experiment) instead of moving to another arm, so the other arms' users do not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from services.experiments.model import Experiment, Kind

_SCALE = float(1 << 64)


@dataclass(frozen=True)
class Assignment:
    """A user's place in one experiment: its arm (A/B) or every arm (interleaving)."""

    experiment: Experiment
    arm: str  # A/B: the user's arm; interleaving: "interleaved"

    @property
    def interleaved(self) -> bool:
        return self.experiment.kind == Kind.INTERLEAVING


INTERLEAVED = "interleaved"


def unit_hash(salt: str, user_id: str) -> float:
    """A uniform point in [0, 1) for (salt, user): SHA-256's first 8 bytes / 2^64."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def arm_index(shares: list[float], point: float) -> int:
    """The arm whose cumulative-share interval holds `point`."""
    total = 0.0
    for index, share in enumerate(shares):
        total += share
        if point < total:
            return index
    return len(shares) - 1  # rounding at the top end


def assign(experiments: Iterable[Experiment], user_id: str, now: datetime) -> list[Assignment]:
    """The user's assignments, at most one per layer, ordered by layer name."""
    by_layer: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        if experiment.active(now):
            by_layer.setdefault(experiment.layer, []).append(experiment)
    assignments = []
    for layer in sorted(by_layer):
        point = unit_hash(f"layer:{layer}", user_id)
        for experiment in by_layer[layer]:
            if experiment.offset <= point < experiment.offset + experiment.traffic:
                assigned = _arm(experiment, user_id)
                if assigned is not None:
                    assignments.append(Assignment(experiment, assigned))
                break
    return assignments


def _arm(experiment: Experiment, user_id: str) -> str | None:
    if experiment.kind == Kind.INTERLEAVING:
        return INTERLEAVED
    arm = experiment.arms[arm_index(experiment.shares(), unit_hash(f"arm:{experiment.salt}", user_id))].name
    return None if arm in experiment.stopped_arms else arm
