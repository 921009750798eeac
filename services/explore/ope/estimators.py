"""IPS, SNIPS and doubly robust estimates of a target policy's CTR per slot, with bootstrap CIs.

Logs are slates: request i showed item a_ij in slot j (k_i slots: requests ask for different
numbers, and one with fewer candidates shows fewer) and got click r_ij. Clicks follow
the position-based model, P(click | a at j) = θ_j · ρ_a (examination θ_j, attractiveness ρ_a), so
a policy's expected clicks per request are Σ_a E(a) ρ_a with the item's *exposure*
E(a) = Σ_{j<k_i} θ_j · π(a at j | x, k_i). Weighting each logged click by the exposure ratio

    w_ij = E_π(a_ij) / E_π₀(a_ij)        (π the target, π₀ the logging policy, x_i the request)

makes the logged clicks unbiased for the target's (Li, Kim & Zitouni, WSDM 2018, "Offline
evaluation of ranking policies with click models": the PBM estimator). Unlike a per-slot weight
π(a at j) / π₀(a at j), it needs π₀ to show a only *somewhere*, not in every slot the target may
use (ε-greedy shows a top-k item only in its own slot). The estimand is the target's clicks per
shown slot, Σ_i E[clicks_i] / Σ_i k_i; with Θ_i = Σ_{j<k_i} θ_j:

    IPS   = Σ_ij w_ij r_ij / Σ_i k_i
    SNIPS = Σ_i Θ_i / Σ_i k_i · Σ_ij w_ij r_ij / Σ_ij w_ij θ_j   (E[Σ_j w_ij θ_j] = Θ_i; Swaminathan &
                                                                  Joachims, NeurIPS 2015, for self-normalising)
    DR    = Σ_i [ D_i + Σ_j w_ij (r_ij − r̂_ij) ] / Σ_i k_i       (Dudík, Langford & Li, ICML 2011)

with r̂_ij = θ_j ρ̂_a the reward model (`reward_model`) and D_i = Σ_a E_π(a) ρ̂_a the target's
expected clicks under the model. θ comes from the reward model too (estimated on the logging
policy's randomised slots). CIs: 2.5% and 97.5% percentiles over bootstrap resamples of whole
requests (the slots of a request are not independent; Σ_i k_i and Σ_i Θ_i are resampled with them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dr")
BOOTSTRAP_CELLS = 4_000_000  # request indices drawn per bootstrap chunk


@dataclass(frozen=True)
class SlateLogs:
    """Per logged slot (flat arrays; `request` indexes the requests 0 … n−1) and per request."""

    request: np.ndarray  # (m,) int
    reward: np.ndarray  # (m,) 0/1
    weight: np.ndarray  # (m,) w_ij
    examination: np.ndarray  # (m,) θ_j of the slot
    predicted: np.ndarray  # (m,) r̂_ij
    direct: np.ndarray  # (n,) D_i
    slots: np.ndarray  # (n,) k_i, the request's slot count
    theta_total: np.ndarray  # (n,) Θ_i = Σ_{j<k_i} θ_j

    def __post_init__(self) -> None:
        if not np.all(np.isfinite(self.weight)):
            raise ValueError("a logged item has no exposure under the logging policy: its propensities are wrong")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


def estimate(logs: SlateLogs, bootstrap: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """{"ips" | "snips" | "dr": the CTR per slot with its 95% bootstrap CI}."""
    n = len(logs.direct)
    per_request = np.stack([
        np.bincount(logs.request, logs.weight * logs.reward, minlength=n),
        np.bincount(logs.request, logs.weight * logs.examination, minlength=n),
        np.bincount(logs.request, logs.weight * (logs.reward - logs.predicted), minlength=n) + logs.direct,
        logs.slots,
        logs.theta_total,
    ])  # (5, n)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS // n)  # resamples drawn at once, so memory stays bounded with many requests
    sums = []
    for start in range(0, bootstrap, chunk):
        draws = rng.integers(0, n, size=(min(chunk, bootstrap - start), n))
        sums.append(np.stack([row[draws].sum(axis=1) for row in per_request]))  # one row at a time: memory
    resampled = np.concatenate(sums, axis=1)  # (5, bootstrap)

    def values(s: np.ndarray) -> np.ndarray:
        clicks, examined, doubly_robust, slots, theta = s
        snips = theta / slots * clicks / np.maximum(examined, 1e-300)
        return np.stack([clicks / slots, snips, doubly_robust / slots])

    point = values(per_request.sum(axis=1)[:, None])[:, 0]
    low, high = np.percentile(values(resampled), [2.5, 97.5], axis=1)
    return {name: Estimate(float(point[e]), float(low[e]), float(high[e])) for e, name in enumerate(ESTIMATORS)}
