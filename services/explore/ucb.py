"""UCB1 over position-debiased counts, with the ranker's score as the prior."""

from __future__ import annotations

import math

import numpy as np

from services.explore.policy import ItemCounts, Policy, Ranked, Slate, Stats, top_k_slate
from services.explore.prior import posterior


class Ucb1(Policy):
    """The k candidates with the highest upper confidence bound, best first.

    With the Beta posterior (a_i, b_i) of `services.explore.prior` (the rank prior of m
    pseudo-impressions plus E_i examined impressions and c_i clicks), n_i = a_i + b_i:

        UCB_i = a_i / n_i + c · sqrt(2 · ln T / n_i),    T = max(e, Σ_i n_i)

    (Auer, Cesa-Bianchi & Fischer, Machine Learning 2002, "Finite-time analysis of the multiarmed
    bandit problem"; c = `explore.ucb_c`). Ties keep the ranker's order. Deterministic given the
    statistics, so every propensity is 1.
    """

    name = "ucb1"
    needs = ItemCounts

    def __init__(self, prior_strength: float, c: float = 1.0) -> None:
        if prior_strength <= 0 or c < 0:
            raise ValueError(f"prior_strength must be > 0 and c >= 0, got {prior_strength}, {c}")
        self.prior_strength = prior_strength
        self.c = c

    @property
    def label(self) -> str:
        return f"{self.name}(m={self.prior_strength:g},c={self.c:g})"

    def indices(self, counts: ItemCounts) -> np.ndarray:
        a, b = posterior(counts, self.prior_strength)
        n = a + b
        total = max(math.e, float(n.sum()))
        return a / n + self.c * np.sqrt(2.0 * math.log(total) / n)

    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        if not isinstance(stats, ItemCounts):
            raise TypeError("ucb1 needs ItemCounts")
        return top_k_slate(ranked, np.argsort(-self.indices(stats), kind="stable"), k)
