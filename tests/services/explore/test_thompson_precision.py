"""Thompson's propensity estimate evaluates the Beta CDF in float32 (issue 19, serving cost): the
logged propensities must stay those of the float64 formula to far below their Monte Carlo error,
for counts up to two million examined impressions."""

from __future__ import annotations

import numpy as np
from scipy.stats import beta as beta_dist

from services.explore.policy import ItemCounts, Ranked
from services.explore.prior import posterior
from services.explore.thompson import Thompson, _cdf, _others, _top_k

CDF_ERROR = 5e-5  # measured ≤ 8.5e-6 below 1e4 trials, 2.8e-5 at 1e6, 4.8e-5 at 2e6
NOISE_SHARE = 0.01  # of the estimate's Monte Carlo standard deviation (measured ≤ 0.001)


def test_float32_cdf_matches_the_float64_beta_cdf() -> None:
    """Shapes from 0.5 to 2e6 (a prior alone up to a week of a popular item's impressions), x at
    quantiles across each distribution and at its edges."""
    rng = np.random.default_rng(7)
    trials = 10 ** rng.uniform(-0.3, 6.3, size=400)
    mean = rng.uniform(0.001, 0.3, size=400)
    a, b = trials * mean + 0.5, trials * (1 - mean) + 0.5
    q = np.concatenate([[0.0, 1e-6, 1e-3], rng.uniform(0, 1, 20), [0.999, 1 - 1e-6, 1.0]])
    x = beta_dist.ppf(q[None, :], a[:, None], b[:, None])
    x = np.concatenate([x, np.zeros((400, 1)), np.ones((400, 1))], axis=1)
    exact = beta_dist.cdf(x, a[:, None], b[:, None])
    got = _cdf(a[:, None], b[:, None], x)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, exact, rtol=0, atol=CDF_ERROR)


def test_float32_cdf_matches_the_float64_beta_cdf_on_a_new_items_prior() -> None:
    """The prior alone (a = m·p, m = 10, p down to 1/5000): draws far below float32's range carry
    much of the mass (Beta(0.002, 10): F(1e-100) ≈ 0.63), and a float32 x of 0 would give F = 0."""
    a = 10.0 * np.array([0.5, 0.05, 0.005, 0.0008, 0.0002])[:, None]
    b = 10.0 - a
    x = np.array([1e-300, 1e-100, 1e-50, 1e-40, 1e-30, 1e-10, 0.5])[None, :]
    np.testing.assert_allclose(_cdf(a, b, x), beta_dist.cdf(x, a, b), rtol=0, atol=CDF_ERROR)


def test_logged_propensities_are_the_float64_estimate_of_the_same_draws() -> None:
    """choose() against the estimate recomputed independently from the same seeded stream (one
    (N + 1) × n Beta draw, row 0's top k shown, the others' order statistics, scipy.stats' float64
    CDF): the same slate, and propensities within 1% of the estimate's own Monte Carlo standard
    deviation (from 30 fresh estimates), at light, moderate and heavy counts."""
    n, k, draws = 200, 10, 32
    policy = Thompson(prior_strength=10.0, draws=draws)
    ranked = Ranked(tuple(f"i{i}" for i in range(n)), np.linspace(1.0, 0.0, n))
    for most in (50, 2_000, 1_000_000):
        rng = np.random.default_rng(most)
        examined = 10 ** rng.uniform(0, np.log10(most), n)
        stats = ItemCounts(examined, np.floor(examined * rng.uniform(0, 0.1, n)))
        a, b = posterior(stats, 10.0)
        for seed in range(5):
            slate = policy.choose(ranked, k, np.random.default_rng(seed), stats)
            sample = np.random.default_rng(seed).beta(a, b, size=(draws + 1, n))
            shown = _top_k(sample[:1], k)[0]
            assert list(slate.positions) == shown.tolist()
            slots = np.arange(k)
            bounds = _others(sample[1:], shown, np.stack([slots, slots + 1], axis=1))
            cdf = beta_dist.cdf(bounds, a[shown][None, :, None], b[shown][None, :, None])
            expected = (cdf[:, :, 0] - cdf[:, :, 1]).mean(axis=0)
            spread = np.std([policy.propensities(a, b, shown, np.random.default_rng(100 + r)) for r in range(30)], axis=0)
            assert np.all(np.array(slate.propensities) > 0)
            assert np.all(np.abs(np.array(slate.propensities) - expected) <= NOISE_SHARE * spread), (most, seed)
