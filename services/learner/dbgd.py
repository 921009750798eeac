"""Dueling bandit gradient descent as DRN uses it (Zheng et al., "DRN: A Deep Reinforcement
Learning Framework for News Recommendation", WWW 2018; after Yue & Joachims, ICML 2009).

An explore head `w̃ = w + Δw`, `Δw = α · U(−1, 1) ⊙ w` (a uniform draw per weight, so each weight
moves by at most a share `α` of itself), competes with the current head `w`: each request shows
the probabilistic interleaving (Hofmann et al., CIKM 2011; `services.experiments.interleaving`) of
their top lists, and a click credits the team that placed the item. After `comparisons` requests
with at least one click, if `(explore wins − current wins) / comparisons > margin`, then
`w ← w + η (w̃ − w)` rescaled to the norm `w` had (the step bounded in norm), and a new `w̃` is
drawn either way. The rescaling is ours: a linear head's ranking depends only on the direction of
`w`, and without it DRN's multiplicative noise shrinks `w` geometrically (`E log(1 + ηαU) < 0`),
and the explore step with it, until learning stops.

A/A mode (`aa=True`) uses `w̃ = w`: the two lists are the same, so `w` cannot move; it measures how
often pure chance makes the explore team "win".
"""

from __future__ import annotations

import numpy as np

from services.experiments.interleaving import probabilistic, team_credit
from services.learner.base import OnlineLearner, Presentation, top_k


class Dbgd(OnlineLearner):
    """DBGD with DRN's defaults (α = 0.1, η = 0.05); one comparison per round is Yue & Joachims'."""

    def __init__(self, weights: np.ndarray, *, alpha: float = 0.1, eta: float = 0.05, comparisons: int = 1,
                 margin: float = 0.0, max_step: float = 1.0, depth: int = 20, tau: float = 3.0,
                 aa: bool = False, seed: int = 0) -> None:
        super().__init__(weights, max_step)
        if not (alpha > 0 and eta > 0 and comparisons >= 1 and depth >= 1 and -1 <= margin < 1):
            raise ValueError("need alpha > 0, eta > 0, comparisons >= 1, depth >= 1, -1 <= margin < 1")
        self.alpha, self.eta, self.comparisons, self.margin = alpha, eta, comparisons, margin
        self.depth, self.tau, self.aa = depth, tau, aa
        self._perturb = np.random.default_rng([seed, 17])
        self.explore = self._draw_explore()
        self.record = np.zeros(3, dtype=np.int64)  # this round's (current wins, explore wins, ties)
        self.explore_wins = self.current_wins = 0  # over the learner's life (A/A: chance alone)

    def _draw_explore(self) -> np.ndarray:
        if self.aa:
            return self.weights.copy()
        return self.weights + self.alpha * self._perturb.uniform(-1.0, 1.0, self.weights.shape) * self.weights

    def reset(self, weights: np.ndarray) -> None:
        super().reset(weights)
        self.explore, self.record = self._draw_explore(), np.zeros(3, dtype=np.int64)

    def present(self, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation:
        lists = [top_k(features @ w, self.depth) for w in (self.weights, self.explore)]
        merged = probabilistic([[str(i) for i in ranking] for ranking in lists], k, rng, self.tau)
        return Presentation(tuple(int(i) for i in merged.items), merged.teams, features)

    def learn(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        if not np.any(clicks):
            return False
        current, explore = team_credit(presentation.teams, list(clicks), 2)
        outcome = 1 if explore > current else 0 if current > explore else 2
        self.record[outcome] += 1
        self.explore_wins += outcome == 1
        self.current_wins += outcome == 0
        if self.record.sum() < self.comparisons:
            return False
        moved = (self.record[1] - self.record[0]) / self.comparisons > self.margin and not self.aa
        if moved:
            target = self.weights + self.eta * (self.explore - self.weights)
            self._apply(target * (np.linalg.norm(self.weights) / np.linalg.norm(target)) - self.weights)
        self.explore, self.record = self._draw_explore(), np.zeros(3, dtype=np.int64)
        return bool(moved)
