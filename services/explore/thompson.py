"""Thompson sampling (Beta–Bernoulli) with Monte Carlo propensities."""

from __future__ import annotations

import numpy as np

from services.explore.policy import ItemCounts, Policy, Ranked, Slate, Stats
from services.explore.prior import posterior


class Thompson(Policy):
    """The top k of one draw θ_i ~ Beta(a_i, b_i) per candidate (posterior of
    `services.explore.prior`), ordered by the draw (Thompson, Biometrika 1933; Chapelle & Li,
    NIPS 2011).

    Propensities are *estimates*, not exact: P(item i at slot j) has no closed form for a slate, so
    the policy makes N more draws (`explore.thompson_draws`, vectorised) from the same posterior
    and logs, for each shown (item, slot), its frequency among the N + 1 slates (the served one
    included, so no logged propensity is 0). The estimate's bias is at most 1 / (N + 1) and its
    standard error sqrt(P·(1 − P) / N): an error bounded by sampling, which the tests check.
    """

    name = "thompson"
    needs = ItemCounts

    def __init__(self, prior_strength: float, draws: int = 1000) -> None:
        if prior_strength <= 0 or draws < 1:
            raise ValueError(f"prior_strength must be > 0 and draws >= 1, got {prior_strength}, {draws}")
        self.prior_strength = prior_strength
        self.draws = draws

    @property
    def label(self) -> str:
        return f"{self.name}(m={self.prior_strength:g},draws={self.draws})"

    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        if not isinstance(stats, ItemCounts):
            raise TypeError("thompson needs ItemCounts")
        k = min(k, len(ranked))
        if k == 0:
            return Slate((), (), ())
        a, b = posterior(stats, self.prior_strength)
        slates = _top_k(rng.beta(a, b, size=(self.draws + 1, len(ranked))), k)  # row 0 is served
        shown = slates[0]
        propensities = (slates == shown).mean(axis=0)
        chosen = [int(i) for i in shown]
        return Slate(tuple(ranked.item_ids[i] for i in chosen), tuple(float(p) for p in propensities), tuple(chosen))


def _top_k(draws: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the k largest values, largest first."""
    top = np.argpartition(-draws, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(draws, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)
