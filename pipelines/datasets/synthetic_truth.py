"""The planted ground truth behind synthetic data, and the file other tests load it from.

What is planted (all drawn from the seed, so the same seed gives the same truth):

- categories: items are spread evenly over `categories` clusters (ids `c<k>`);
- latent factors: unit vectors around a random unit centroid per category; each user prefers one
  category and its factors sit near that centroid, so preference = `user · item` is high inside the
  preferred category;
- popularity: Zipf, `p(item) ∝ 1 / rank^zipf_alpha` over a random ranking;
- transitions: within each category the items form a random cycle; `transition[i]` is the item a
  session tends to move to after clicking `i` (always in the same category);
- position bias: the probability of examining slot `p` is `1 / (p + 1)` (the position-based click
  model); a click happens with probability `examination[p] * relevance`.

`relevance(u, i | last click l) = sigmoid(4 (user_u · item_i) - 2 + 2 [i == transition[l]])`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SLATE_SIZE = 10


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generator; validated on construction (`ValueError` names the bad one)."""

    users: int = 1_000
    items: int = 2_000
    events: int = 100_000
    seed: int = 0
    categories: int = 20
    dim: int = 16
    zipf_alpha: float = 1.0
    mean_steps: float = 6.0
    days: float = 30.0
    start_ts: int = 1_704_067_200  # 2024-01-01T00:00:00Z
    rating_rate: float = 0.15
    purchase_rate: float = 0.1

    def __post_init__(self) -> None:
        checks = {
            "users must be >= 1": self.users >= 1,
            f"items must be >= {SLATE_SIZE} (one slate)": self.items >= SLATE_SIZE,
            "events must be >= 1": self.events >= 1,
            "categories must be between 1 and items": 1 <= self.categories <= self.items,
            "dim must be >= 2": self.dim >= 2,
            "zipf_alpha must be >= 0": self.zipf_alpha >= 0,
            "mean_steps must be >= 1": self.mean_steps >= 1,
            "days must be > 0": self.days > 0,
            "rating_rate and purchase_rate must be in [0, 1]": 0 <= self.rating_rate <= 1 and 0 <= self.purchase_rate <= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid synthetic parameters: " + "; ".join(failed))


@dataclass(frozen=True)
class SyntheticTruth:
    """The planted structure. Item `j` is `item_id = f"i{j}"`, user `k` is `user_id = f"u{k}"`."""

    params: SynthParams
    item_category: np.ndarray  # (items,) int: category index of each item
    item_factors: np.ndarray  # (items, dim) float32, unit rows
    user_category: np.ndarray  # (users,) int: each user's preferred category
    user_factors: np.ndarray  # (users, dim) float32, unit rows
    item_popularity: np.ndarray  # (items,) float64, sums to 1
    user_activity: np.ndarray  # (users,) float64, sums to 1: share of sessions
    transition: np.ndarray  # (items,) int: planted next item, same category
    examination: np.ndarray  # (SLATE_SIZE,) float64: P(examine slot p)

    @staticmethod
    def item_index(item_id: str) -> int:
        return int(item_id[1:])

    @staticmethod
    def user_index(user_id: str) -> int:
        return int(user_id[1:])

    def relevance(self, users: np.ndarray, items: np.ndarray, boosted: np.ndarray | None = None) -> np.ndarray:
        """`sigmoid(4 u·v - 2 + 2 boosted)` for matching arrays of user and item indices."""
        dot = np.einsum("...d,...d->...", self.user_factors[users], self.item_factors[items])
        logit = 4.0 * dot - 2.0 + (2.0 * boosted if boosted is not None else 0.0)
        return 1.0 / (1.0 + np.exp(-logit))


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def zipf_shares(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Shares `∝ 1 / rank^alpha` over a random ranking of `n` things (sums to 1)."""
    ranks = rng.permutation(n)
    weights = 1.0 / np.power(ranks + 1.0, alpha)
    return weights / weights.sum()


def _cycles_within(category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    transition = np.empty(len(category), dtype=np.int64)
    for members in np.split(np.argsort(category, kind="stable"), np.cumsum(np.bincount(category))[:-1]):
        order = rng.permutation(members)
        transition[order] = np.roll(order, -1)
    return transition


def make_truth(params: SynthParams) -> SyntheticTruth:
    """Draw the planted structure for `params` (deterministic in `params.seed`)."""
    rng = np.random.default_rng([params.seed, 0])
    n_items, n_users, dim = params.items, params.users, params.dim
    centroids = _unit(rng.standard_normal((params.categories, dim)))
    item_category = rng.permutation(np.arange(n_items) % params.categories)
    item_factors = _unit(centroids[item_category] + 0.3 / np.sqrt(dim) * rng.standard_normal((n_items, dim)))
    user_category = rng.integers(params.categories, size=n_users)
    user_factors = _unit(centroids[user_category] + 0.5 / np.sqrt(dim) * rng.standard_normal((n_users, dim)))
    return SyntheticTruth(
        params=params,
        item_category=item_category,
        item_factors=item_factors,
        user_category=user_category,
        user_factors=user_factors,
        item_popularity=zipf_shares(rng, n_items, params.zipf_alpha),
        user_activity=zipf_shares(rng, n_users, 0.5),
        transition=_cycles_within(item_category, rng),
        examination=1.0 / (np.arange(SLATE_SIZE) + 1.0),
    )


_ARRAYS = (
    "item_category", "item_factors", "user_category", "user_factors", "item_popularity",
    "user_activity", "transition", "examination",
)  # fmt: skip


def save_truth(truth: SyntheticTruth, path: Path) -> Path:
    """Write the truth as `.npz` (arrays + params JSON) atomically; returns `path`."""
    arrays: dict[str, Any] = {name: getattr(truth, name) for name in _ARRAYS}
    return write_npz(path, params=np.array(json.dumps(asdict(truth.params))), **arrays)


def write_npz(path: Path, **arrays: Any) -> Path:
    """Write `arrays` as a compressed `.npz` atomically (hidden temp file, fsync, rename); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_truth(path: Path) -> SyntheticTruth:
    """Load a truth file written by `recsys data synth` (`<state_dir>/synthetic/truth.npz`)."""
    with np.load(path) as data:
        params = SynthParams(**json.loads(str(data["params"])))
        return SyntheticTruth(params=params, **{name: data[name] for name in _ARRAYS})
