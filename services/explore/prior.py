"""The ranker's score as a Beta prior on each candidate's click probability (UCB1, Thompson).

Rule. Ranker scores have no common scale (DIN gives probabilities, the recall fallback cosine
similarities), so the prior uses the rank only. Candidate i of n at 0-based rank r_i has the
score quantile u_i = (n − r_i − ½) / n ∈ (0, 1) and the prior mean

    p_i = u_i · min(1, 2·μ₀),    μ₀ = α / (α + β)   (the CTR prior of `feature_store.definitions`)

so the candidates' prior means average μ₀ and the ranker's best candidate has the highest. The
prior weighs m pseudo-impressions (`explore.prior_strength`): with E_i examined impressions and
c_i clicks (position-debiased, `feature_store.position_bias`) the posterior is

    Beta(a_i, b_i),  a_i = m·p_i + c_i,  b_i = m·(1 − p_i) + max(E_i − c_i, 0)

(Chapelle & Li, NIPS 2011, "An empirical evaluation of Thompson sampling", for Beta–Bernoulli).
"""

from __future__ import annotations

import numpy as np

from feature_store.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA
from services.explore.policy import ItemCounts

PRIOR_MEAN = CTR_PRIOR_ALPHA / (CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)


def prior_means(n: int) -> np.ndarray:
    """p_i for ranks 0 … n−1."""
    quantiles = (n - np.arange(n) - 0.5) / max(n, 1)
    return quantiles * min(1.0, 2.0 * PRIOR_MEAN)


def posterior(counts: ItemCounts, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, b_i) of each candidate's Beta posterior, in rank order."""
    means = prior_means(len(counts.clicks))
    clicks = np.asarray(counts.clicks, dtype=float)
    misses = np.maximum(np.asarray(counts.examined, dtype=float) - clicks, 0.0)
    return strength * means + clicks, strength * (1.0 - means) + misses
