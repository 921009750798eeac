"""Pairwise differentiable gradient descent (Oosterhuis & de Rijke, "Differentiable unbiased online
learning to rank", CIKM 2018).

The shown list is sampled from the Plackett–Luce model of the scores `s_d = w · x_d` over all
candidates `D`: `P(R) = Π_i exp(s_{R_i}) / Σ_{d ∈ D \\ R_{<i}} exp(s_d)`. Clicks give preferences
`d_k ≻ d_l` for a clicked `d_k` and an unclicked `d_l` shown above the last click or right below
it. Each pair is weighted by `ρ = P(R*) / (P(R) + P(R*))`, `R*` the list with `d_k` and `d_l`
swapped, which makes the gradient unbiased w.r.t. position bias, and the step is

    Δw = lr · Σ_{k ≻ l} ρ(d_k, d_l) · ∇_w P(d_k ≻ d_l),
    ∇_w P(d_k ≻ d_l) = σ(s_k − s_l) σ(s_l − s_k) (x_k − x_l),

bounded in norm by `max_step`. No explore network: every slot is team 0.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from services.learner.base import OnlineLearner, Presentation


def plackett_luce_log_probability(ranking: np.ndarray, scores: np.ndarray) -> float:
    """`log P(ranking)` of a (top-k) list under Plackett–Luce over all `scores`."""
    shifted = np.exp(scores - scores.max())
    remaining = shifted.sum() - np.concatenate(([0.0], np.cumsum(shifted[ranking])[:-1]))
    numerators = scores[ranking] - scores.max()
    return float(np.sum(numerators - np.log(np.maximum(remaining, np.finfo(np.float64).tiny))))


def preference_pairs(clicks: np.ndarray) -> list[tuple[int, int]]:
    """(clicked slot, unclicked slot) pairs over the slots up to one below the last click."""
    clicked = np.flatnonzero(clicks)
    if len(clicked) == 0:
        return []
    considered = range(min(int(clicked[-1]) + 2, len(clicks)))
    return [(k, l) for k in clicked for l in considered if not clicks[l]]


def pdgd_gradient(shown: np.ndarray, clicks: np.ndarray, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`Σ ρ · ∇_w P(d_k ≻ d_l)` over the inferred pairs (zero without clicks)."""
    scores = features @ weights
    log_shown = plackett_luce_log_probability(shown, scores)
    gradient = np.zeros_like(weights)
    for k, l in preference_pairs(clicks):
        swapped = shown.copy()
        swapped[k], swapped[l] = shown[l], shown[k]
        log_swapped = plackett_luce_log_probability(swapped, scores)
        rho = float(np.exp(log_swapped - np.logaddexp(log_shown, log_swapped)))
        dk, dl = shown[k], shown[l]
        gap = scores[dk] - scores[dl]
        gradient += rho * expit(gap) * expit(-gap) * (features[dk] - features[dl])
    return gradient


class Pdgd(OnlineLearner):
    """PDGD with learning rate `lr` (the paper's 0.1 for linear models)."""

    def __init__(self, weights: np.ndarray, *, lr: float = 0.1, max_step: float = 1.0) -> None:
        super().__init__(weights, max_step)
        if lr <= 0:
            raise ValueError("lr must be > 0")
        self.lr = lr

    def present(self, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation:
        # Gumbel-max: sorting scores plus Gumbel noise draws a Plackett–Luce list.
        noisy = features @ self.weights + rng.gumbel(size=len(features))
        shown = np.argsort(-noisy, kind="stable")[:k]
        return Presentation(tuple(int(i) for i in shown), (0,) * len(shown), features)

    def learn(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        clicks = np.asarray(clicks, dtype=bool)
        if not clicks.any():
            return False
        shown = np.array(presentation.shown)
        self._apply(self.lr * pdgd_gradient(shown, clicks, presentation.features, self.weights))
        return True
