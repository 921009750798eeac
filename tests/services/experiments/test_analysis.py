"""The report's statistics against independent computations and their coverage on planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from services.experiments import analysis


def test_wilson_matches_scipy_and_handles_no_impressions() -> None:
    for clicks, n in ((0, 10), (3, 10), (10, 10), (123, 4567)):
        ci = stats.binomtest(clicks, n).proportion_ci(method="wilson")
        got = analysis.wilson(clicks, n)
        assert (got.estimate, got.low, got.high) == pytest.approx((clicks / n, ci.low, ci.high))
    assert analysis.wilson(0, 0) == analysis.Interval(0.0, 0.0, 1.0)


def test_lift_interval_covers_the_planted_lift() -> None:
    rng = np.random.default_rng(0)
    p0, p1, n, runs = 0.10, 0.12, 20_000, 400
    covered = 0
    for _ in range(runs):
        c0, c1 = rng.binomial(n, p0), rng.binomial(n, p1)
        lift, p = analysis.relative_lift(int(c1), n, int(c0), n)
        covered += lift.low <= p1 / p0 - 1 <= lift.high
        z = (c1 / n - c0 / n) / math.sqrt((c0 + c1) / (2 * n) * (1 - (c0 + c1) / (2 * n)) * 2 / n)
        assert p == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert abs(covered / runs - 0.95) < 0.035
    assert math.isnan(analysis.relative_lift(0, 100, 5, 100)[0].estimate)


def test_srm_alarms_on_a_skewed_split_only() -> None:
    assert analysis.srm_p([5000, 5050], [0.5, 0.5]) > 0.1
    assert analysis.srm_p([5000, 5400], [0.5, 0.5]) < analysis.SRM_ALPHA
    assert analysis.srm_p([3000, 7000], [0.3, 0.7]) == pytest.approx(1.0)


def test_guardrail_p_is_small_only_past_the_allowed_drop() -> None:
    # CTR 0.16 vs 0.20: a 20% drop. Past a 10% allowance: significant; within a 30% one: not.
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10) < 1e-3
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.30) > 0.99
    expected = stats.norm.cdf((0.16 - 0.9 * 0.2) / math.sqrt(0.16 * 0.84 / 10_000 + 0.81 * 0.2 * 0.8 / 10_000))
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10) == pytest.approx(expected)


def test_preference_units_sum_rows_and_the_bootstrap_interval_covers() -> None:
    outcomes = analysis.unit_outcomes(["u1", "u1", "u2", "u3", "u4"], np.array([1, 0, 0, 2, 0.0]),
                                      np.array([0, 2, 1, 2, 0.0]))
    assert sorted(outcomes.tolist()) == [-1, -1, 0]  # u1: 1 vs 2; u2: 0 vs 1; u3 tie; u4 no clicks
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        draws = rng.choice([1, -1, 0], size=400, p=[0.35, 0.25, 0.40])
        covered += (pref := analysis.preference(draws, rng, 500)).delta.low <= 0.05 <= pref.delta.high
    assert abs(covered / 200 - 0.95) < 0.05
    assert pref.sign_p == pytest.approx(stats.binomtest(pref.wins_a, pref.wins_a + pref.wins_b).pvalue)
