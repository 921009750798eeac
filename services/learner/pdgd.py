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

**Sharpness** (ours): the learner starts from `c · w_base` (`starting_weights`), the base's ranking
with a sharper Plackett–Luce list (the softmax of `c · s`). With the base's own scale the list
spreads over the whole catalogue, so most inferred pairs compare items far below the top, and the
step follows a catalogue-wide pairwise objective whose optimum for the linear head is not the best
top-k: without drift `w` walks away from a good base (−0.0008 CTR on its own top-10 in the
simulation at lr 0.01, c = 1; benchmarks/RESULTS.md). A sharper list draws its pairs near the top
(and costs the learning share less CTR).

`P(R)` needs only the shown items' scores and `log Σ_{d ∈ D} exp(s_d)` over all candidates, so a
served list's update needs only the shown items' features, their scores under the weights that drew
the list and that one number (`logged_gradient`; what the API keeps for `recsys learn online`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logsumexp

from services.learner.base import OnlineLearner, Presentation


def starting_weights(base: np.ndarray, sharpness: float) -> np.ndarray:
    """Where PDGD starts (and rolls back to) on a base layer `w_base`: `c · w_base`, `c` = `sharpness`
    (the same ranking; Plackett–Luce lists of `c · s`, see the module docstring)."""
    if sharpness <= 0:
        raise ValueError("sharpness must be > 0")
    return sharpness * np.asarray(base, dtype=np.float64)


def slot_log_probabilities(list_scores: np.ndarray, log_total: float) -> np.ndarray:
    """Each slot's `log P(d | the slots above) = s_d − log Σ_{d' ∈ D not yet shown} exp(s_d')` under
    Plackett–Luce, from a (top-k) list's scores in list order and `log Σ_{d ∈ D} exp(s_d)` over every
    candidate."""
    top = max(log_total, float(list_scores.max()))
    drawn = np.exp(list_scores - top)
    remaining = np.exp(log_total - top) - np.concatenate(([0.0], np.cumsum(drawn)[:-1]))
    return list_scores - top - np.log(np.maximum(remaining, np.finfo(np.float64).tiny))


def list_log_probability(list_scores: np.ndarray, log_total: float) -> float:
    """`log P(R)` of a (top-k) list: the sum of its `slot_log_probabilities`."""
    return float(np.sum(slot_log_probabilities(list_scores, log_total)))


def plackett_luce_log_probability(ranking: np.ndarray, scores: np.ndarray) -> float:
    """`log P(ranking)` of a (top-k) list of candidate indices under Plackett–Luce over all `scores`."""
    return list_log_probability(scores[ranking], float(logsumexp(scores)))


def sample_list(scores: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Plackett–Luce list of `min(k, len(scores))` candidate indices (Gumbel-max: the top k of
    scores plus Gumbel noise) and each slot's propensity given the slots above
    (`slot_log_probabilities`, exact, as the interleaving merges log it)."""
    shown = np.argsort(-(scores + rng.gumbel(size=len(scores))), kind="stable")[:k]
    return shown, np.exp(slot_log_probabilities(scores[shown], float(logsumexp(scores))))


def preference_pairs(clicks: np.ndarray) -> list[tuple[int, int]]:
    """(clicked slot, unclicked slot) pairs over the slots up to one below the last click."""
    clicked = np.flatnonzero(clicks)
    if len(clicked) == 0:
        return []
    considered = range(min(int(clicked[-1]) + 2, len(clicks)))
    return [(k, l) for k in clicked for l in considered if not clicks[l]]


def logged_gradient(clicks: np.ndarray, features: np.ndarray, scores: np.ndarray, logged_scores: np.ndarray,
                    log_total: float) -> np.ndarray:
    """`Σ ρ · ∇_w P(d_k ≻ d_l)` over a shown list's inferred pairs (zero without clicks).

    `features` [k, H] and `scores` [k]: the shown items' in slot order, scores under the weights
    being learned; `logged_scores` [k] and `log_total`: under the weights that drew the list (ρ is
    a ratio of that policy's probabilities; the same as `scores` when it learns at once)."""
    log_shown = list_log_probability(logged_scores, log_total)
    gradient = np.zeros(features.shape[1])
    for k, l in preference_pairs(clicks):
        swapped = logged_scores.copy()
        swapped[k], swapped[l] = logged_scores[l], logged_scores[k]
        log_swapped = list_log_probability(swapped, log_total)
        rho = float(np.exp(log_swapped - np.logaddexp(log_shown, log_swapped)))
        gap = scores[k] - scores[l]
        gradient += rho * expit(gap) * expit(-gap) * (features[k] - features[l])
    return gradient


def pdgd_gradient(shown: np.ndarray, clicks: np.ndarray, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`logged_gradient` of the list `shown` (candidate indices) drawn by `weights` itself."""
    scores = features @ weights
    listed = scores[shown]
    return logged_gradient(clicks, features[shown], listed, listed, float(logsumexp(scores)))


class Pdgd(OnlineLearner):
    """PDGD with learning rate `lr` (the paper's 0.1 for linear models)."""

    def __init__(self, weights: np.ndarray, *, lr: float = 0.1, max_step: float = 1.0) -> None:
        super().__init__(weights, max_step)
        if lr <= 0:
            raise ValueError("lr must be > 0")
        self.lr = lr

    def present(self, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation:
        shown, _ = sample_list(features @ self.weights, k, rng)
        return Presentation(tuple(int(i) for i in shown), (0,) * len(shown), features)

    def learn(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        clicks = np.asarray(clicks, dtype=bool)
        if not clicks.any():
            return False
        shown = np.array(presentation.shown)
        self._apply(self.lr * pdgd_gradient(shown, clicks, presentation.features, self.weights))
        return True

    def learn_logged(self, clicks: np.ndarray, features: np.ndarray, logged_scores: np.ndarray, log_total: float) -> bool:
        """Learn from a list served earlier: its shown items' `features`, their `logged_scores` and
        the candidates' `log_total` under the weights that drew it (`logged_gradient`)."""
        clicks = np.asarray(clicks, dtype=bool)
        if not clicks.any():
            return False
        self._apply(self.lr * logged_gradient(clicks, features, features @ self.weights, logged_scores, log_total))
        return True
