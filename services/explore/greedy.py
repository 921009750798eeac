"""Greedy: the ranker's top k, unexplored."""

from __future__ import annotations

import numpy as np

from services.explore.policy import Policy, Ranked, Slate, Stats, top_k_slate


class Greedy(Policy):
    """Slot j shows the j-th ranked item; deterministic, so every propensity is 1."""

    name = "greedy"

    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        return top_k_slate(ranked, np.arange(len(ranked)), k)
