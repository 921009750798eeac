"""Dueling bandit gradient descent as DRN uses it (Zheng et al., "DRN: A Deep Reinforcement
Learning Framework for News Recommendation", WWW 2018; after Yue & Joachims, ICML 2009).

An explore head `w̃ = w + Δw`, `Δw = α · U(−1, 1) ⊙ w` (a uniform draw per weight, so each weight
moves by at most a share `α` of itself), competes with the current head `w`: each request shows
the probabilistic interleaving (Hofmann et al., CIKM 2011; `services.experiments.interleaving`) of
their top lists, and a click credits the team that placed the item. After `comparisons` requests
with at least one click, if `(explore wins − current wins) / comparisons > margin` and the
explore wins pass a one-sided sign test at level `significance` (below), then `w ← w + η (w̃ − w)`
rescaled to the norm `w` had (the step bounded in norm), and a new `w̃` is drawn either way. The
rescaling is ours: a linear head's ranking depends only on the direction of `w`, and without it
DRN's multiplicative noise shrinks `w` geometrically (`E log(1 + ηαU) < 0`), and the explore step
with it, until learning stops.

The sign test (Dixon & Mood, JASA 1946) is ours too: with one comparison per round (DRN, Yue &
Joachims) `w` steps toward every `w̃` that wins a single comparison by chance, and without drift,
where `w` is already good, those steps are a random walk away from it (−0.0069 CTR in the
simulation, benchmarks/RESULTS.md). Ties say nothing and are left out: of the `n` decided
comparisons of a round, explore won `x`, and `w` may move only when
`p = P(X ≥ x | X ~ Binomial(n, 1/2)) = Σ_{j ≥ x} C(n, j) / 2ⁿ ≤ significance` (1.0: no test).

A/A mode (`aa=True`) uses `w̃ = w`: the two lists are the same, so `w` cannot move; it measures how
often pure chance makes the explore team "win".
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

from services.experiments.interleaving import probabilistic, team_credit
from services.learner.base import OnlineLearner, Presentation, top_k


class Dbgd(OnlineLearner):
    """DBGD with DRN's defaults (α = 0.1, η = 0.05); one comparison per round is Yue & Joachims'."""

    def __init__(self, weights: np.ndarray, *, alpha: float = 0.1, eta: float = 0.05, comparisons: int = 1,
                 margin: float = 0.0, significance: float = 1.0, max_step: float = 1.0, depth: int = 20,
                 tau: float = 3.0, aa: bool = False, seed: int = 0) -> None:
        super().__init__(weights, max_step)
        if not (alpha > 0 and eta > 0 and comparisons >= 1 and depth >= 1 and -1 <= margin < 1 and 0 < significance <= 1):
            raise ValueError("need alpha > 0, eta > 0, comparisons >= 1, depth >= 1, -1 <= margin < 1, 0 < significance <= 1")
        self.alpha, self.eta, self.comparisons, self.margin = alpha, eta, comparisons, margin
        self.significance = significance
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
        current_wins, explore_wins = int(self.record[0]), int(self.record[1])
        moved = ((explore_wins - current_wins) / self.comparisons > self.margin and not self.aa
                 and sign_test(explore_wins, current_wins) <= self.significance)
        if moved:
            target = self.weights + self.eta * (self.explore - self.weights)
            self._apply(target * (np.linalg.norm(self.weights) / np.linalg.norm(target)) - self.weights)
        self.explore, self.record = self._draw_explore(), np.zeros(3, dtype=np.int64)
        return bool(moved)


def sign_test(wins: int, losses: int) -> float:
    """One-sided sign test: `P(X ≥ wins)` for `X ~ Binomial(wins + losses, 1/2)` (1.0 with no decided comparison)."""
    return float(binom.sf(wins - 1, wins + losses, 0.5)) if wins + losses else 1.0
