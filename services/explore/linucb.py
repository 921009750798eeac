"""LinUCB, disjoint model (Li, Chu, Langford & Schapire, WWW 2010, Algorithm 1)."""

from __future__ import annotations

import numpy as np

from services.explore.policy import LinearStats, Policy, Ranked, Slate, Stats, top_k_slate


class LinUcb(Policy):
    """The k candidates with the highest upper confidence bound of a per-item linear model:

        θ̂_i = A_i⁻¹ b_i,    p_i = x_iᵀ θ̂_i + α · sqrt(x_iᵀ A_i⁻¹ x_i)

    with A_i = λI + Σ x xᵀ and b_i = Σ r x over item i's attributed impressions (read from the
    store; the stream job updates them, `feature_store.linucb_store`), x_i the request's context
    (dimension d ≤ 32, the user's, the same for every candidate). The store keeps A_i⁻¹
    (Sherman–Morrison in the stream job), and the statistics arrive packed (`LinearStats`):
    θ_i = A_i⁻ᵀ b_i and the coefficients c_i of the quadratic form, so the score is
    xᵀθ_i + α · sqrt(c_i · q(x)) with q(x) = (x_j x_k)_{j≤k}: two dot products per candidate, no
    solve and no matrix product. Each candidate's score depends only on its own row (equal
    statistics score equally), and ties keep the ranker's order. The request only reads;
    deterministic given the statistics, so every propensity is 1.
    """

    name = "linucb"
    needs = LinearStats

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    @property
    def label(self) -> str:
        return f"{self.name}(alpha={self.alpha:g})"

    def indices(self, stats: LinearStats) -> np.ndarray:
        # vecdot: one dot per row, so equal rows give bit-equal scores (a BLAS gemv over the
        # stack rounds a row differently by its position, which would reorder ties).
        mean = np.vecdot(stats.theta, stats.context)
        width = np.vecdot(stats.quad, stats.quadratic_terms())
        return mean + self.alpha * np.sqrt(np.maximum(width, 0.0))

    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        if not isinstance(stats, LinearStats):
            raise TypeError("linucb needs LinearStats")
        return top_k_slate(ranked, np.argsort(-self.indices(stats), kind="stable"), k)
