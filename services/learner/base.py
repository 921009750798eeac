"""The interface every online learner implements, and the bounded step they share.

A request is served in two calls: `present(features, k, rng)` ranks the candidates (rows of
`features`, the penultimate features `h(u, i)` of each candidate) and returns the shown list;
`learn(presentation, clicks)` takes the clicks on that list and may move the weights. Weights only
change in `learn`, by a step whose L2 norm is at most `max_step`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Presentation:
    """A shown list: candidate row indices (best first), each slot's team (0: the current weights,
    1: the explore weights; all 0 for a learner without an explore network), and the features
    the list was built from (the learner's update needs them)."""

    shown: tuple[int, ...]
    teams: tuple[int, ...]
    features: np.ndarray


def bounded(step: np.ndarray, max_step: float) -> np.ndarray:
    """`step` scaled down to L2 norm `max_step` if it is longer (direction kept)."""
    norm = float(np.linalg.norm(step))
    return step * (max_step / norm) if norm > max_step else step


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest scores, highest first (ties by index)."""
    return np.argsort(-scores, kind="stable")[:k]


class OnlineLearner(ABC):
    """Weights `w` of a linear scoring head, learned online from clicks on the lists it presents."""

    explore: np.ndarray | None = None  # the explore weights w̃ of a learner with an explore network

    def __init__(self, weights: np.ndarray, max_step: float) -> None:
        if max_step <= 0:
            raise ValueError("max_step must be > 0")
        self.weights = np.asarray(weights, dtype=np.float64).copy()
        self.max_step = max_step
        self.updates = 0

    def rank(self, features: np.ndarray, k: int) -> np.ndarray:
        """The current weights' own top-`k` (what traffic outside the learning share sees)."""
        return top_k(features @ self.weights, k)

    def reset(self, weights: np.ndarray) -> None:
        """Start again from `weights` (a newly promoted base, or a rollback)."""
        self.weights = np.asarray(weights, dtype=np.float64).copy()

    def _apply(self, step: np.ndarray) -> None:
        self.weights = self.weights + bounded(step, self.max_step)
        self.updates += 1

    @abstractmethod
    def present(self, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation:
        """The list to show for one request (`k` slots at most)."""

    @abstractmethod
    def learn(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        """Learn from the clicks (a boolean per shown slot); True when the weights moved."""
