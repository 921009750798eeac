"""ε-greedy per slot, with exact marginal propensities."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.stats import binom

from services.explore.policy import Policy, Ranked, Slate, Stats


class EpsilonGreedy(Policy):
    """Each slot explores with probability ε, independently, from the pool outside the greedy top k.

    Rule. Let g_0 … g_{k-1} be the ranker's top k (k ≤ n), P the other candidates (the pool,
    p = |P|), and π a uniformly random order of P. Going through the slots in order, slot j draws
    e_j ~ Bernoulli(ε) independently; if e_j = 1 and r < p, where r counts the pool items shown so
    far, it shows π_r (r += 1), otherwise it shows g_j. (This is sampling from the pool uniformly
    without replacement; the "r < p" clause only matters when p < k.)

    Propensities (exact). Let E_j = e_0 + … + e_{j-1} ~ Binomial(j, ε). The pool items shown before
    slot j number min(E_j, p), so slot j shows a pool item iff e_j = 1 and E_j < p:

        q_j = P(slot j shows a pool item) = ε · P(Binomial(j, ε) ≤ p − 1)

    since e_j is independent of E_j. Given that it does, the item is π_{E_j}, and π is a uniform
    random order independent of the e's, so every pool item is equally likely:

        P(g_j at slot j) = 1 − q_j,        P(pool item i at slot j) = q_j / p.

    With p ≥ k, P(Binomial(j, ε) ≤ p − 1) = 1 for every j ≤ k − 1, so these are 1 − ε and ε / p.
    With p = 0, q_j = 0: the greedy list, propensity 1. (Sutton & Barto, "Reinforcement
    Learning", 2nd ed., §2.2, for ε-greedy itself.)
    """

    name = "epsilon_greedy"
    deterministic = False

    def __init__(self, epsilon: float) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    @property
    def label(self) -> str:
        return f"{self.name}(epsilon={self.epsilon:g})"

    def explore_probabilities(self, k: int, pool: int) -> tuple[float, ...]:
        """q_j for slots 0 … k−1 (see the class docstring)."""
        return _explore_probabilities(self.epsilon, k, pool)

    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        k = min(k, len(ranked))
        pool = len(ranked) - k
        explores = rng.random(k) < self.epsilon
        order = k + rng.permutation(pool)
        q = self.explore_probabilities(k, pool)
        positions, propensities, taken = [], [], 0
        for slot in range(k):
            if explores[slot] and taken < pool:
                positions.append(int(order[taken]))
                propensities.append(q[slot] / pool)
                taken += 1
            else:
                positions.append(slot)
                propensities.append(1.0 - q[slot])
        return Slate(tuple(ranked.item_ids[i] for i in positions), tuple(propensities), tuple(positions))


    def placement(self, ranked: Ranked, items: Sequence[int], k: int, rng: np.random.Generator,
                  stats: Stats = None) -> np.ndarray:
        """The exact marginals of the class docstring: 1 − q_j for g_j at slot j, q_j / p for a pool item at any slot."""
        k = min(k, len(ranked))
        pool = len(ranked) - k
        q = np.array(self.explore_probabilities(k, pool))
        out = np.zeros((len(items), k))
        for row, index in enumerate(items):
            if index < k:
                out[row, index] = 1.0 - q[index]
            else:
                out[row] = q / pool
        return out


@lru_cache(maxsize=1024)
def _explore_probabilities(epsilon: float, k: int, pool: int) -> tuple[float, ...]:
    return tuple(float(q) for q in epsilon * binom.cdf(pool - 1, np.arange(k), epsilon))
