"""Item 2 of issue 19: the propensities each policy returns are the placement frequencies of its
slates. Many seeded slates per policy; every (item, slot) frequency must lie within a binomial
z-bound of the propensity, with the threshold Bonferroni-adjusted over the pairs tested."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import beta as beta_dist
from scipy.stats import norm

from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.policy import ItemCounts, Policy, Ranked, Stats
from services.explore.prior import posterior
from services.explore.thompson import Thompson, _others

FAMILY_ERROR = 1e-3  # chance that a correct policy fails any one of these checks


def _ranked(n: int) -> Ranked:
    return Ranked(tuple(f"i{i}" for i in range(n)), np.linspace(1.0, 0.0, n))


def _draw(policy: Policy, ranked: Ranked, k: int, stats: Stats, slates: int, seed: int) -> tuple[np.ndarray, list[list[list[float]]]]:
    """Placement counts (n, k) over `slates` seeded slates, and every propensity returned per pair."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(ranked), k))
    returned: list[list[list[float]]] = [[[] for _ in range(k)] for _ in range(len(ranked))]
    for _ in range(slates):
        slate = policy.choose(ranked, k, rng, stats)
        assert len(set(slate.item_ids)) == len(slate.item_ids) == min(k, len(ranked))
        for slot, (index, propensity) in enumerate(zip(slate.positions, slate.propensities)):
            assert ranked.item_ids[index] == slate.item_ids[slot]
            counts[index, slot] += 1
            returned[index][slot].append(propensity)
    return counts, returned


def _z(pairs: int) -> float:
    return float(norm.ppf(1 - FAMILY_ERROR / (2 * pairs)))


def _epsilon_greedy_truth(epsilon: float, n: int, k: int) -> np.ndarray:
    """P(item i at slot j) by enumerating every explore pattern (independent of the policy's formula)."""
    pool = n - k
    truth = np.zeros((n, k))
    for flags in itertools.product([0, 1], repeat=k):
        weight = np.prod([epsilon if f else 1 - epsilon for f in flags])
        taken = 0
        for slot, explore in enumerate(flags):
            if explore and taken < pool:
                truth[k:, slot] += weight / pool
                taken += 1
            else:
                truth[slot, slot] += weight
    return truth


@pytest.mark.parametrize(("epsilon", "n", "k"), [(0.3, 12, 4), (0.5, 6, 4), (0.2, 5, 5), (1.0, 7, 3)])
def test_epsilon_greedy_frequencies_match_its_exact_propensities(epsilon: float, n: int, k: int) -> None:
    policy, ranked, slates = EpsilonGreedy(epsilon), _ranked(n), 20_000
    counts, returned = _draw(policy, ranked, k, None, slates, seed=11)
    truth = _epsilon_greedy_truth(epsilon, n, k)
    z = _z(n * k)
    for i, j in itertools.product(range(n), range(k)):
        p = min(max(truth[i, j], 0.0), 1.0)
        assert abs(counts[i, j] / slates - p) <= z * np.sqrt(p * (1 - p) / slates) + 1e-12, (i, j)
        assert all(abs(r - p) < 1e-12 for r in returned[i][j]), (i, j, returned[i][j][:3], p)


def test_epsilon_greedy_with_a_pool_as_large_as_k_is_one_minus_epsilon_and_epsilon_over_pool() -> None:
    slate = EpsilonGreedy(0.25).choose(_ranked(10), 3, np.random.default_rng(0))
    for index, propensity in zip(slate.positions, slate.propensities):
        assert propensity == pytest.approx(0.75 if index < 3 else 0.25 / 7)


def test_epsilon_greedy_without_a_pool_is_the_greedy_list() -> None:
    slate = EpsilonGreedy(0.9).choose(_ranked(3), 5, np.random.default_rng(0))
    assert slate.item_ids == ("i0", "i1", "i2") and slate.propensities == (1.0, 1.0, 1.0)


def _counts(examined: list[float], clicks: list[float]) -> ItemCounts:
    return ItemCounts(np.array(examined, dtype=float), np.array(clicks, dtype=float))


def test_thompson_frequencies_match_its_estimated_propensities() -> None:
    stats = _counts([40, 0, 200, 10, 5, 80], [3, 0, 9, 1, 0, 6])
    draws, slates, k = 400, 3000, 3
    policy, ranked = Thompson(prior_strength=5.0, draws=draws), _ranked(6)
    counts, returned = _draw(policy, ranked, k, stats, slates, seed=5)
    z = _z(6 * k)
    for i, j in itertools.product(range(6), range(k)):
        if not returned[i][j]:
            continue
        frequency, estimate = counts[i, j] / slates, float(np.mean(returned[i][j]))
        p = max(frequency, estimate)
        spread = z * np.sqrt(p * (1 - p) * (1 / slates + 1 / ((draws + 1) * len(returned[i][j]))))
        assert abs(frequency - estimate) <= spread + 1 / (draws + 1) + 1 / slates, (i, j, frequency, estimate)


def _exact_thompson(a: np.ndarray, b: np.ndarray, i: int, slot: int) -> float:
    """P(item i's draw has exactly `slot` of the others' draws above it), by quadrature over
    ∫ f_i(t) · P(exactly `slot` others > t) dt, with the other items enumerated (small n)."""
    others = [m for m in range(len(a)) if m != i]

    def integrand(t: float) -> float:
        total = 0.0
        for above in itertools.combinations(others, slot):
            total += float(np.prod([beta_dist.sf(t, a[m], b[m]) for m in above])
                           * np.prod([beta_dist.cdf(t, a[m], b[m]) for m in others if m not in above]))
        return float(beta_dist.pdf(t, a[i], b[i])) * total

    return float(integrate.quad(integrand, 0, 1, limit=200)[0])


def test_thompson_propensities_match_the_integrals_for_every_slot() -> None:
    """n = 3, k = 2: each logged estimate averages to the exact P(item at slot), for both slots."""
    stats = _counts([30, 4, 12], [2, 1, 1])
    a, b = posterior(stats, 5.0)
    policy, slates = Thompson(prior_strength=5.0, draws=32), 600
    rng = np.random.default_rng(3)
    returned: dict[tuple[int, int], list[float]] = {}
    for _ in range(slates):
        slate = policy.choose(_ranked(3), 2, rng, stats)
        for slot, (index, propensity) in enumerate(zip(slate.positions, slate.propensities)):
            returned.setdefault((index, slot), []).append(propensity)
    z = _z(len(returned))
    for (i, slot), estimates in returned.items():
        exact = _exact_thompson(a, b, i, slot)
        # Unbiased; each estimate's variance is at most the frequency estimate's p(1 − p) / draws.
        error = z * np.sqrt(exact * (1 - exact) / (32 * len(estimates)))
        assert abs(float(np.mean(estimates)) - exact) <= error, (i, slot, np.mean(estimates), exact)


def test_thompson_estimates_vary_less_than_placement_frequencies() -> None:
    """The conditional estimate's spread over seeds is below the frequency estimate's sqrt(p(1 − p) / N)."""
    stats = _counts([400, 30, 0, 90, 10, 200, 0, 50], [30, 2, 0, 3, 1, 12, 0, 4])
    policy, ranked = Thompson(prior_strength=10.0, draws=32), _ranked(8)
    slate = policy.choose(ranked, 3, np.random.default_rng(0), stats)
    a, b = posterior(stats, 10.0)
    shown = np.array(slate.positions)
    estimates = np.array([policy.propensities(a, b, shown, np.random.default_rng(seed)) for seed in range(300)])
    p = estimates.mean(axis=0)
    assert np.all(estimates.std(axis=0) < np.sqrt(p * (1 - p) / 32))


@pytest.mark.parametrize("n", [2, 3, 11, 40])
def test_thompson_order_statistics_are_the_others_sorted_draws(n: int) -> None:
    """o_m of each item (the m-th largest of the *other* candidates' draws, o_0 = 1, 0 past the
    last) against sorting every draw without the item, with ties (draws rounded to 0.1, zeros)."""
    k = 10
    rng = np.random.default_rng(n)
    draws = np.round(rng.beta(0.3, 1.0, size=(50, n)), 1)
    items = np.arange(n)
    got = _others(draws, items, np.broadcast_to(np.arange(k + 1), (n, k + 1)))
    for t in range(len(draws)):
        for i in items:
            others = np.sort(np.delete(draws[t], i))[::-1]
            expected = np.concatenate([[1.0], others[:k], np.zeros(max(0, k - len(others)))])
            np.testing.assert_array_equal(got[t, i], expected)
