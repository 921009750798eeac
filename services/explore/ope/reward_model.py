"""The position-based reward model of the estimators: r̂(a, j) = θ_j · ρ̂_a, fit on the logs.

- θ_j (examination) from the *randomised* slots only: those where the logging policy placed an
  item independently of its relevance (ε-greedy's explored slots, uniform over the pool), so that
  slot CTRs differ by examination alone: θ_j = sCTR_j / sCTR_0 over those slots
  (`feature_store.position_bias.examination`, smoothed CTRs; Joachims, Swaminathan & Schnabel,
  WSDM 2017, estimate propensities by randomisation the same way). Over every slot a ranker's
  better items sit higher and θ would mix examination with relevance.
- ρ̂_a, the item's debiased CTR over all its logged slots, as the attribution store computes it:
  (c_a + α) / (Σ_j θ_j n_{a,j} + α + β) (`position_bias.debiased_ctr`); an item absent from the
  logs gets the prior mean α / (α + β).

Fit on the same logs it is used on (no cross-fitting); DR stays unbiased when the propensities and
θ are right, whatever ρ̂.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from feature_store.position_bias import CLICK, IMPRESSION, debiased_ctr, examination


class PositionBasedRewards:
    """θ and ρ̂ from logged (item, slot, click, randomised) rows."""

    def __init__(self, items: Sequence[str], slots: np.ndarray, rewards: np.ndarray, randomised: np.ndarray) -> None:
        slots, rewards = np.asarray(slots, dtype=int), np.asarray(rewards, dtype=float)
        randomised = np.asarray(randomised, dtype=bool)
        k = int(slots.max()) + 1 if len(slots) else 1
        theta = examination({str(j): {IMPRESSION: int((randomised & (slots == j)).sum()),
                                      CLICK: int(rewards[randomised & (slots == j)].sum())} for j in range(k)})
        self.theta = np.array([theta[str(j)] for j in range(k)])
        names, index = np.unique(np.asarray(items, dtype=object), return_inverse=True)
        examined = np.bincount(index, self.theta[slots], minlength=len(names))
        clicks = np.bincount(index, rewards, minlength=len(names))
        self.attractiveness = dict(zip(names.tolist(), debiased_ctr(clicks, examined).tolist()))
        self.prior = float(debiased_ctr(0, 0))

    def rho(self, items: Sequence[str]) -> np.ndarray:
        """ρ̂ per item."""
        return np.array([self.attractiveness.get(item, self.prior) for item in items])

    def predict(self, items: Sequence[str], slots: np.ndarray) -> np.ndarray:
        """r̂ = θ_j · ρ̂_a per (item, slot)."""
        return self.theta[np.asarray(slots, dtype=int)] * self.rho(items)
