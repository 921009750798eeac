"""The simulated population: planted user and item vectors, item popularity bias, drift, arrivals.

Built on the synthetic generator's planted structure (`pipelines.datasets.synthetic_truth`:
category centroids, unit item and user factors near them, Zipf popularity and activity), then:

- user vector `u = affinity · û` (û: the synthetic unit factor), so `u · v ∈ [-affinity, affinity]`;
- item bias `b_i = offset + popularity_weight · log(n · p_i)`, `p_i` the Zipf popularity over the
  `n` items: 0 extra for an item of average popularity, more for the head, less for the tail;
- user click propensity `β_u ~ N(0, user_bias_spread²)`, added to every logit of user `u` (0 by
  default: every user shares `offset`);
- activity: each user's share of requests, Zipf over a random order of the users with exponent
  `activity_skew` (default: the synthetic generator's, 0.5);
- drift: from step `drift_at` on, every user's vector is `affinity · unit((1 - λ) û + λ c)`, `c`
  the centroid of another category drawn per user, `λ = drift_strength`;
- arrivals: the last `new_items` items exist only from step `new_items_at` on (before it the
  tenant has not loaded them and no simulated user can click them).

User `k` is `f"{prefix}u{k}"`, item `j` is `f"{prefix}i{j}"`, category `c` is `f"{prefix}c{c}"`,
with `prefix` `sim<seed>-` by default. A simulation against a service (`session.simulate`) adds a
fingerprint of the parameters to it, so two populations never share ids there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Mapping

import numpy as np

from pipelines.datasets.synthetic_truth import SynthParams, make_truth, zipf_shares


@dataclass(frozen=True)
class PopulationParams:
    """Knobs of the population; validated on construction (`ValueError` names the bad one)."""

    users: int = 200
    items: int = 500
    seed: int = 0
    categories: int = 10
    dim: int = 16
    popularity_skew: float = 1.0
    popularity_weight: float = 0.5
    affinity: float = 4.0
    offset: float = -2.0
    user_bias_spread: float = 0.0
    activity_skew: float | None = None
    drift_at: int | None = None
    drift_strength: float = 0.8
    new_items_at: int | None = None
    new_items: int = 0
    id_prefix: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "users must be >= 1": self.users >= 1,
            "items must be >= 10": self.items >= 10,
            "categories must be between 1 and items": 1 <= self.categories <= self.items,
            "dim must be >= 2": self.dim >= 2,
            "popularity_skew and popularity_weight must be >= 0": min(self.popularity_skew, self.popularity_weight) >= 0,
            "affinity must be > 0": self.affinity > 0,
            "user_bias_spread must be >= 0": self.user_bias_spread >= 0,
            "activity_skew must be >= 0": self.activity_skew is None or self.activity_skew >= 0,
            "drift_at must be >= 0": self.drift_at is None or self.drift_at >= 0,
            "drift_strength must be in [0, 1]": 0 <= self.drift_strength <= 1,
            "seed must be >= 0": self.seed >= 0,
            "new_items must be >= 0": self.new_items >= 0,
            "new_items > 0 needs new_items_at (the step at which they arrive)": self.new_items <= 0
            or self.new_items_at is not None,
            "new_items_at must be >= 1 and needs new_items > 0": self.new_items_at is None
            or (self.new_items_at >= 1 and self.new_items > 0),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid population parameters: " + "; ".join(failed))

    @classmethod
    def of_synthetic(cls, synth: SynthParams, **knobs: float | int | None) -> PopulationParams:
        """The population whose planted structure is that of the synthetic data `synth` describes
        (`recsys data synth`): the same users, items, categories and vectors under the same ids
        (no prefix), so the simulator clicks by the preferences the service's models trained on.
        `knobs` sets the simulator's own parameters (affinity, drift, arrivals, ...)."""
        return cls(users=synth.users, items=synth.items, seed=synth.seed, categories=synth.categories, dim=synth.dim,
                   popularity_skew=synth.zipf_alpha, id_prefix="", **knobs)  # type: ignore[arg-type]  # fmt: skip

    @property
    def prefix(self) -> str:
        return self.id_prefix if self.id_prefix is not None else f"sim{self.seed}-"

    @property
    def total_items(self) -> int:
        """Items at the end of a run: the initial catalog plus the arrivals."""
        return self.items + (self.new_items if self.new_items_at is not None else 0)


@dataclass(frozen=True, eq=False)
class Population:
    """The planted truth of one population. Arrays are indexed by user / item number."""

    params: PopulationParams
    item_category: np.ndarray  # (total_items,) int
    item_vectors: np.ndarray  # (total_items, dim) float64, unit rows
    item_bias: np.ndarray  # (total_items,) float64: b_i
    user_bias: np.ndarray  # (users,) float64: β_u, the user's click propensity on the logit
    item_arrival: np.ndarray  # (total_items,) int: first step at which the item exists
    user_category: np.ndarray  # (users,) int: preferred category before any drift
    user_vectors: np.ndarray  # (users, dim) float64, norm `affinity`
    drift_category: np.ndarray  # (users,) int: the category each user drifts toward
    drifted_vectors: np.ndarray  # (users, dim) float64: user vectors from `drift_at` on
    user_activity: np.ndarray  # (users,) float64, sums to 1: share of requests

    def user_id(self, user: int) -> str:
        return f"{self.params.prefix}u{user}"

    def item_id(self, item: int) -> str:
        return f"{self.params.prefix}i{item}"

    def category_id(self, category: int) -> str:
        return f"{self.params.prefix}c{category}"

    @cached_property
    def _item_numbers(self) -> dict[str, int]:
        return {self.item_id(j): j for j in range(len(self.item_bias))}

    def item_index(self, item_id: str) -> int | None:
        """The item number of `item_id`, or None for an item outside the population."""
        return self._item_numbers.get(item_id)

    def user_index(self, user_id: str) -> int:
        prefix = f"{self.params.prefix}u"
        if not user_id.startswith(prefix) or not user_id[len(prefix):].isdigit():
            raise KeyError(f"{user_id!r} is not a user of this population")
        return int(user_id[len(prefix):])

    def vectors_at(self, step: int) -> np.ndarray:
        """The user vectors in force at `step` (after `drift_at`, the drifted ones)."""
        drift_at = self.params.drift_at
        return self.drifted_vectors if drift_at is not None and step >= drift_at else self.user_vectors

    def arrived(self, step: int) -> np.ndarray:
        """Boolean mask of the items that exist at `step`."""
        return self.item_arrival <= step

    def arriving_at(self, step: int) -> list[int]:
        """The item numbers that arrive exactly at `step` (none at step 0: that is the catalog)."""
        return np.flatnonzero(self.item_arrival == step).tolist() if step > 0 else []

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as arrays, the params as a JSON string (`population_from_arrays` reverses it)."""
        return {"params": np.array(json.dumps(asdict(self.params))), **{name: getattr(self, name) for name in _ARRAYS}}


_ARRAYS = (
    "item_category", "item_vectors", "item_bias", "user_bias", "item_arrival", "user_category", "user_vectors",
    "drift_category", "drifted_vectors", "user_activity",
)  # fmt: skip


def population_from_arrays(arrays: Mapping[str, np.ndarray]) -> Population:
    """The population `Population.to_arrays` described (e.g. read back from an `.npz`)."""
    params = PopulationParams(**json.loads(str(arrays["params"])))
    # Truth files written before user_bias existed had every user at 0.
    arrays = {"user_bias": np.zeros(params.users), **arrays}
    return Population(params=params, **{name: np.asarray(arrays[name]) for name in _ARRAYS})


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def make_population(params: PopulationParams) -> Population:
    """Draw the population for `params` (deterministic in `params.seed`)."""
    n = params.total_items
    base = make_truth(SynthParams(
        users=params.users, items=n, seed=params.seed, categories=params.categories, dim=params.dim,
        zipf_alpha=params.popularity_skew,
    ))  # fmt: skip
    rng = np.random.default_rng([params.seed, 10])
    item_vectors = base.item_factors.astype(np.float64)
    user_unit = base.user_factors.astype(np.float64)
    centroids = _unit(np.stack([item_vectors[base.item_category == c].mean(axis=0) for c in range(params.categories)]))
    shift = rng.integers(1, params.categories, size=params.users) if params.categories > 1 else np.zeros(params.users, int)
    drift_category = (base.user_category + shift) % params.categories
    lam = params.drift_strength if params.drift_at is not None else 0.0
    drifted = _unit((1 - lam) * user_unit + lam * centroids[drift_category])
    arrival = np.zeros(n, dtype=np.int64)
    arrival[params.items :] = params.new_items_at or 0
    # Own streams, so that the default draws (and every other array) stay as they were.
    user_bias = params.user_bias_spread * np.random.default_rng([params.seed, 11]).standard_normal(params.users)
    activity = base.user_activity if params.activity_skew is None else zipf_shares(
        np.random.default_rng([params.seed, 12]), params.users, params.activity_skew)
    return Population(
        params=params,
        item_category=base.item_category.astype(np.int64),
        item_vectors=item_vectors,
        item_bias=params.offset + params.popularity_weight * np.log(n * base.item_popularity),
        user_bias=user_bias,
        item_arrival=arrival,
        user_category=base.user_category.astype(np.int64),
        user_vectors=params.affinity * user_unit,
        drift_category=drift_category.astype(np.int64),
        drifted_vectors=params.affinity * drifted,
        user_activity=activity,
    )
