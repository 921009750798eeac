"""Position bias from attributed counts, and the item CTR corrected for it (pure functions).

Examination model (position-based click model): P(click | item i at position k) = θ_k · r_i, where
θ_k is the probability that position k is looked at and r_i the item's attractiveness. From the
per-position counts of the attribution store:

    θ_k = sCTR_k / sCTR_0,   sCTR_k = smoothed_ctr(clicks_k, impressions_k)   (θ_0 = 1)

and the debiased CTR of item i (clicks over *examined* impressions, Beta(α, β) prior of
`feature_store.definitions.smoothed_ctr`):

    dCTR_i = (clicks_i + α) / (Σ_k θ_k · impressions_{i,k} + α + β)

A position with no impressions gets θ = prior / sCTR_0 (its smoothed CTR is the prior's mean;
θ = 1 only while position 0 has none either); an impression without a position
(`attribution.NO_VALUE`) gets θ = 1. The ratio estimator is unbiased only when
placement is independent of relevance (randomised or explored slots); under a deterministic ranker
better items sit higher and θ_k mixes examination with relevance (Joachims et al., WSDM 2017,
"Unbiased learning-to-rank with biased feedback"; Wang et al., WSDM 2018, regression-EM, is the
refinement that removes that confounding).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from feature_store.attribution import NO_VALUE
from feature_store.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA, smoothed_ctr
from feature_store.schemas import EventType

IMPRESSION, CLICK = EventType.IMPRESSION.value, EventType.CLICK.value


def examination(position_counts: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """θ per position (keys as in the store: "0", "1", …) from {position: {measure: count}}."""
    def ctr(position: str) -> float:
        counts = position_counts.get(position, {})
        return float(smoothed_ctr(counts.get(CLICK, 0), counts.get(IMPRESSION, 0)))

    top = ctr("0")
    return {position: 1.0 if position == NO_VALUE else ctr(position) / top for position in position_counts}


def debiased_ctr(clicks: ArrayLike, examined: ArrayLike) -> np.ndarray:
    """dCTR from clicks and examined impressions Σ_k θ_k · impressions_k (elementwise)."""
    return (np.asarray(clicks, dtype=float) + CTR_PRIOR_ALPHA) / (np.asarray(examined, dtype=float)
                                                                  + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)
